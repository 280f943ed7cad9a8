#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU-marked tests, the GPU-profile Multi30k recipes, then
# the decoding and training benchmarks on CUDA. Results (JSON lines and files) go to OUT_DIR.
#
#   bench/gpu_suite.sh DATA_DIR OUT_DIR
#
# DATA_DIR holds Multi30k Task 1 ({train,val,test_2016_flickr}.{en,de,fr}[.gz]). Environment:
#   PAIRS="en-de en-fr"   recipes to run (empty: none)      MINUTES=5   training minutes per recipe
#   DEVICE=cuda           cpu for a dry run                 EXTRA=""    more --set options for the recipes
#   BENCH="decode train profile"  benchmarks to run (empty: none); profile: where the time goes (profile_ops.py)
set -euo pipefail
data="$1" out="$2"
device="${DEVICE:-cuda}" minutes="${MINUTES:-5}" pairs="${PAIRS-en-de en-fr}" benches="${BENCH-decode train profile}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out"
file() { [[ -f "$data/$1" ]] && echo "$data/$1" || echo "$data/$1.gz"; }
extra=()
for option in ${EXTRA:-}; do extra+=(--set "$option"); done

python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
# The tests that need a GPU (skipped elsewhere): e.g. an update never synchronises host and device.
if python -c "import pytest" 2> /dev/null; then
  python -m pytest -q -m gpu "$here/tests" 2>&1 | tail -5 | tee "$out/gpu_tests.txt"
fi
for pair in $pairs; do
  src="${pair%-*}" tgt="${pair#*-}"
  "$here/recipes/multi30k.sh" --src "$src" --tgt "$tgt" --profile gpu --data-dir "$data" --run-dir "$out/$pair" \
    --set train.max_minutes="$minutes" --set train.device="$device" "${extra[@]}" 2> "$out/$pair.log" | tee -a "$out/recipes.jsonl"
done
if [[ " $benches " == *" decode "* ]]; then
  model="$out/en-de"
  [[ -d "$model" ]] || { echo "the decode benchmark needs the en-de recipe's model in $model" >&2; exit 2; }
  python "$here/bench/decode.py" --model "$model" --src "$(file test_2016_flickr.en)" --ref "$(file test_2016_flickr.de)" \
    --device "$device" --batch-size 128 --json "$out/decode_$device.json"
fi
if [[ " $benches " == *" train "* ]]; then
  python "$here/bench/train_speed.py" --data "$data" --device "$device" --compile --json "$out/train_speed_$device.json"
fi
if [[ " $benches " == *" profile "* ]]; then
  python "$here/bench/profile_ops.py" train --data "$data" --device "$device" --json "$out/profile_train_$device.json"
  python "$here/bench/profile_ops.py" train --data "$data" --device "$device" --engine hf --json "$out/profile_train_hf_$device.json"
  if [[ -d "$out/en-de" ]]; then
    python "$here/bench/profile_ops.py" decode --model "$out/en-de" --src "$(file test_2016_flickr.en)" --device "$device" \
      --json "$out/profile_decode_$device.json"
  fi
fi
