#!/usr/bin/env bash
# Multi30k end to end: train a tokenizer and a transformer, translate test_2016_flickr with beam 5,
# and print one JSON line with sacreBLEU, chrF and TER (with signatures) plus the time taken.
#
#   recipes/multi30k.sh --src en --tgt de --run-dir runs/en-de [--data-dir DIR] [--set section.key=value ...]
#
# DIR holds Multi30k Task 1 files named {train,val,test_2016_flickr}.{lang}[.gz]; without --data-dir
# the data comes from the Hugging Face hub (bentrevett/multi30k, en-de only) through `datasets`.
set -euo pipefail

src=en tgt=de data_dir="" run_dir="" overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --tgt) tgt="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --set) overrides+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$run_dir" ]] || { echo "--run-dir is required" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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

nmt train --config "$here/multi30k.yaml" --run-dir "$run_dir" \
  --set data.src_lang="$src" --set data.tgt_lang="$tgt" \
  --set data.train="$data_dir/train" --set data.valid="$data_dir/val" "${overrides[@]}" >&2

test_src="$data_dir/test_2016_flickr.$src"; [[ -f "$test_src" ]] || test_src="$test_src.gz"
test_ref="$data_dir/test_2016_flickr.$tgt"; [[ -f "$test_ref" ]] || test_ref="$test_ref.gz"
nmt eval --model "$run_dir" --src "$test_src" --ref "$test_ref" --beam 5 \
  --output "$run_dir/test_2016_flickr.hyp.$tgt" --json > "$run_dir/test_2016_flickr.json"

python - "$run_dir/test_2016_flickr.json" "$src" "$tgt" "$start" <<'PY'
import json, sys, time
scores = json.load(open(sys.argv[1]))
print(json.dumps({"pair": f"{sys.argv[2]}-{sys.argv[3]}", "test_set": "test_2016_flickr",
                  "minutes": round((time.time() - int(sys.argv[4])) / 60, 1), **scores}))
PY
