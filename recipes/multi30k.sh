#!/usr/bin/env bash
# Multi30k end to end: train a tokenizer and a transformer, average the last checkpoints if that
# scores better on val, translate test_2016_flickr with beam 5, and print one JSON line with
# sacreBLEU, chrF, TER and lowercased 13a BLEU (with signatures and 95% bootstrap intervals) plus
# the time taken.
#
#   recipes/multi30k.sh --src en --tgt de --run-dir runs/en-de [--profile cpu|gpu] [--data-dir DIR]
#                       [--set section.key=value ...]
#
# Pairs: en-de, de-en, en-fr, en-cs (any two of en, de, fr, cs). --profile cpu (default) fits a
# 2-core machine in about an hour (52-60 min per pair); gpu trains a larger model for one GPU. DIR holds Multi30k Task 1
# files named {train,val,test_2016_flickr}.{lang}[.gz]; without --data-dir the data comes from the
# Hugging Face hub (bentrevett/multi30k, en and de only) through `datasets`.
set -euo pipefail

src=en tgt=de data_dir="" run_dir="" profile=cpu overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --tgt) tgt="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --set) overrides+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$run_dir" ]] || { echo "--run-dir is required" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$here/multi30k-$profile.yaml"
[[ -f "$config" ]] || { echo "--profile must be cpu or gpu, got $profile" >&2; exit 2; }
if [[ -z "$data_dir" && ! ( "$src $tgt" == "en de" || "$src $tgt" == "de en" ) ]]; then
  echo "the hub copy of Multi30k has en and de only; give --data-dir for $src-$tgt" >&2; exit 2
fi
mkdir -p "$run_dir"
start=$(date +%s)

if [[ -z "$data_dir" ]]; then
  data_dir="$run_dir/data"
  python - "$src" "$tgt" "$data_dir" <<'PY'
import sys
from pathlib import Path
import datasets
src, tgt, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
splits = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
corpus = datasets.load_dataset("bentrevett/multi30k")
for split, name in splits.items():
    for lang in (src, tgt):
        (out / f"{name}.{lang}").write_text("".join(line + "\n" for line in corpus[split][lang]), encoding="utf-8")
PY
fi

nmt train --config "$config" --run-dir "$run_dir" \
  --set data.src_lang="$src" --set data.tgt_lang="$tgt" \
  --set data.train="$data_dir/train" --set data.valid="$data_dir/val" "${overrides[@]}" >&2

file() { [[ -f "$data_dir/$1" ]] && echo "$data_dir/$1" || echo "$data_dir/$1.gz"; }
# Averaging the last 4 or 8 checkpoints (saved 200 updates apart) is kept only if it beats the plain model on val.
nmt average --model "$run_dir" --last 4 --last 8 --valid-src "$(file "val.$src")" --valid-ref "$(file "val.$tgt")" \
  > "$run_dir/average.json"
test_src="$(file "test_2016_flickr.$src")" test_ref="$(file "test_2016_flickr.$tgt")"
nmt eval --model "$run_dir" --src "$test_src" --ref "$test_ref" --beam 5 --bootstrap 1000 \
  --output "$run_dir/test_2016_flickr.hyp.$tgt" --json > "$run_dir/test_2016_flickr.json"

python - "$run_dir" "$src" "$tgt" "$start" "$profile" <<'PY'
import json, sys, time
run, src, tgt, start, profile = sys.argv[1:]
scores = json.load(open(f"{run}/test_2016_flickr.json"))
average = json.load(open(f"{run}/average.json"))
print(json.dumps({"pair": f"{src}-{tgt}", "profile": profile, "test_set": "test_2016_flickr",
                  "minutes": round((time.time() - int(start)) / 60, 1), "average": average["chosen"],
                  "val_bleu": average["bleu"], **scores}))
PY
