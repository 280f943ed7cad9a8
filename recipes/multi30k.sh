#!/usr/bin/env bash
# Multi30k end to end: train a tokenizer and a transformer, average the last checkpoints if that
# scores better on val, translate test_2016_flickr with beam 5, and print one JSON line with
# sacreBLEU, chrF, TER and lowercased 13a BLEU (with signatures and 95% bootstrap intervals) plus
# the time taken.
#
#   recipes/multi30k.sh --src en --tgt de --run-dir runs/en-de [--profile quick|cpu|gpu]
#                       [--data-dir DIR | --hub] [--set section.key=value ...]
#   recipes/multi30k.sh --multilingual --run-dir runs/multi [--data-dir DIR] [--set ...]
#
# --multilingual: one model for en<->de, en<->fr, en<->cs (recipes/multi30k-multilingual.yaml),
# then a JSON table of every direction's test BLEU, trained and zero-shot (de-fr, fr-de, ...).
# Pairs: any two of en, de, fr, cs. Profiles (recipes/multi30k-PROFILE.yaml): quick, a first
# result in under 10 minutes on 2 CPU cores; cpu (the default), the full model in about an hour
# on 2 CPU cores (52-60 min per pair in fp32; en-de 42 min in bf16, train.precision auto's choice
# on a CPU with AMX); gpu, a larger model for one GPU.
# Data: Multi30k Task 1 ships with nmt in recipes/data/multi30k (nothing is downloaded).
# --data-dir DIR reads DIR/{train,val,test_2016_flickr}.{lang}[.gz] instead; --hub downloads the
# Hugging Face hub's copy (bentrevett/multi30k, en and de only) through `datasets`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src=en tgt=de data_dir="" run_dir="" profile=cpu hub=0 multilingual=0 overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --tgt) tgt="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --hub) hub=1; shift ;;
    --multilingual) multilingual=1; shift ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --set) overrides+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$run_dir" ]] || { echo "--run-dir is required" >&2; exit 2; }
if [[ $multilingual == 1 ]]; then
  [[ $hub == 0 ]] || { echo "--multilingual reads the shipped copy (or --data-dir), not --hub (en and de only)" >&2; exit 2; }
  data_dir="${data_dir:-$here/data/multi30k}"
  mkdir -p "$run_dir"
  start=$(date +%s)
  nmt train --config "$here/multi30k-multilingual.yaml" --run-dir "$run_dir" \
    --set data.train="$data_dir/train" --set data.valid="$data_dir/val" "${overrides[@]}" >&2
  # The best checkpoint by the mean of the six directions' val BLEU; every direction of test_2016_flickr,
  # the trained six and the zero-shot ones between German, French and Czech.
  nmt eval --model "$run_dir" --test "$data_dir/test_2016_flickr" --beam 5 --output-dir "$run_dir/test_2016_flickr" \
    --json > "$run_dir/test_2016_flickr.json"
  python - "$run_dir" "$start" <<'PY'
import json, sys, time
run, start = sys.argv[1:]
table = json.load(open(f"{run}/test_2016_flickr.json"))
print(json.dumps({"profile": "multilingual", "test_set": "test_2016_flickr",
                  "minutes": round((time.time() - int(start)) / 60, 1), **table}))
PY
  exit 0
fi
config="$here/multi30k-$profile.yaml"
[[ -f "$config" ]] || { echo "--profile must be quick, cpu or gpu, got $profile" >&2; exit 2; }
if [[ $hub == 1 ]]; then
  [[ -z "$data_dir" ]] || { echo "give --data-dir or --hub, not both" >&2; exit 2; }
  if [[ ! ( "$src $tgt" == "en de" || "$src $tgt" == "de en" ) ]]; then
    echo "the hub copy of Multi30k has en and de only; drop --hub for $src-$tgt (the shipped copy has en, de, fr, cs)" >&2; exit 2
  fi
  data_dir="$run_dir/data"
elif [[ -z "$data_dir" ]]; then
  data_dir="$here/data/multi30k"
  for lang in "$src" "$tgt"; do
    [[ -f "$data_dir/train.$lang.gz" ]] || { echo "Multi30k has en, de, fr and cs, not $lang; give --data-dir DIR for other data" >&2; exit 2; }
  done
fi
mkdir -p "$run_dir"
start=$(date +%s)

if [[ $hub == 1 ]]; then  # a missing network ends here in one line (nmt.hub), before anything is trained
  python - "$src" "$tgt" "$data_dir" <<'PY'
import sys
from pathlib import Path
from nmt.errors import NMTError
from nmt.hub import load_hub_dataset
src, tgt, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
try:
    corpus = load_hub_dataset("bentrevett/multi30k", instead="drop --hub to use the copy of Multi30k shipped "
                              "in recipes/data/multi30k, or give --data-dir DIR")
except NMTError as exc:
    sys.exit(f"error: {exc}")
out.mkdir(parents=True, exist_ok=True)
for split, name in {"train": "train", "validation": "val", "test": "test_2016_flickr"}.items():
    for lang in (src, tgt):
        (out / f"{name}.{lang}").write_text("".join(line + "\n" for line in corpus[split][lang]), encoding="utf-8")
PY
fi

nmt train --config "$config" --run-dir "$run_dir" \
  --set data.src_lang="$src" --set data.tgt_lang="$tgt" \
  --set data.train="$data_dir/train" --set data.valid="$data_dir/val" "${overrides[@]}" >&2

file() { [[ -f "$data_dir/$1" ]] && echo "$data_dir/$1" || echo "$data_dir/$1.gz"; }
# Averaging the last 4 or 8 checkpoints (train.save_every apart) is kept only if it beats the plain model on val.
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
