#!/usr/bin/env bash
# Everything that needs a GPU, as one command that fits a short GPU loan (9 minutes on one H200 by
# default): the GPU tests, the training benchmark against Hugging Face MarianMT (steady-state MFU and
# whole-run tokens/s, same batches, base shape with 25k-token batches), one GPU-profile Multi30k
# recipe bounded in time, the decoding benchmark on the recipe's model, and the operator counts of a
# training update. Each stage writes JSON into OUT_DIR; OUT_DIR/suite.json says how each one went.
#
#   bench/gpu_suite.sh DATA_DIR OUT_DIR
#
# DATA_DIR holds Multi30k Task 1 ({train,val,test_2016_flickr}.{en,de}[.gz]). A GPU image without
# `datasets` gets it from the wheels in bench/wheels (fill that folder first: bench/fetch_wheels.sh),
# installed without an index. Stages run in the order below; one that would not fit in what is left of
# BUDGET is skipped (and said so), and each runs under a timeout of its share. Environment:
#   DEVICE=cuda          cpu for a dry run (tests/test_gpu_suite.py runs one at tiny sizes)
#   BUDGET=540           seconds for all stages together
#   STAGES="tests train recipe decode ops"
#   MINUTES=2            whole minutes of recipe training   EXTRA=""  more --set options for the recipe
#   TRAIN_ARGS="--compile --rounds 2"    DECODE_ARGS="--rounds 1"    more options for the benchmarks
#   OPS_CONFIG=recipes/multi30k-gpu.yaml OPS_ARGS=""        what the operator count counts
set -uo pipefail
data="$1" out="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device="${DEVICE:-cuda}" budget="${BUDGET:-540}" stages="${STAGES-tests train recipe decode ops}"
minutes="${MINUTES:-2}" train_args="${TRAIN_ARGS---compile --rounds 2}" decode_args="${DECODE_ARGS---rounds 1}"
ops_config="${OPS_CONFIG:-$here/recipes/multi30k-gpu.yaml}" ops_args="${OPS_ARGS:-}"
mkdir -p "$out"
file() { [[ -f "$data/$1" ]] && echo "$data/$1" || echo "$data/$1.gz"; }
report="$out/suite.json"
export data out here device minutes report EXTRA
echo "{}" > "$report"

record() {  # stage status seconds [note]: one entry of suite.json
  python - "$report" "$@" <<'PY'
import json, sys
path, stage, status, seconds, *note = sys.argv[1:]
report = json.load(open(path))
report[stage] = {"status": status, "seconds": int(seconds), **({"note": note[0]} if note else {})}
json.dump(report, open(path, "w"), indent=2)
PY
}

# stage NAME SECONDS COMMAND...: run COMMAND (a program, or a function below) under a timeout of SECONDS
# (less if less is left), or skip it when less than half of SECONDS is left.
stage() {
  local name="$1" share="$2" left=$((budget - SECONDS)) start=$SECONDS status
  shift 2
  [[ " $stages " == *" $name "* ]] || return 0
  if (( left < share / 2 )); then
    echo "== $name: skipped, ${left}s left of the budget" >&2
    record "$name" skipped 0 "${left}s left of ${budget}s"
    return 0
  fi
  (( share > left )) && share=$left
  echo "== $name (at most ${share}s)" >&2
  timeout --kill-after=10 "$share" bash -c '"$@"' "$name" "$@"
  status=$?
  if (( status == 0 )); then record "$name" ok $((SECONDS - start))
  elif (( status == 124 || status == 137 )); then record "$name" timed_out $((SECONDS - start))
  else record "$name" "failed ($status)" $((SECONDS - start)); fi
}

python - > "$out/environment.json" <<'PY'
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()}))
PY
cat "$out/environment.json" >&2
if ! python -c "import datasets" 2> /dev/null; then
  python -m pip install --quiet --no-index --find-links "$here/bench/wheels" datasets \
    || { echo "datasets is missing and bench/wheels cannot supply it (run bench/fetch_wheels.sh)" >&2; exit 2; }
fi

gpu_tests() {
  python -m pytest -q -m gpu "$here/tests" --junitxml "$out/gpu_tests.xml" -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
  local status=$?
  python - "$out/gpu_tests.xml" > "$out/gpu_tests.json" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
results = {f"{c.get('classname')}::{c.get('name')}": next((child.tag for child in c if child.tag in
           ("failure", "error", "skipped")), "passed") for c in cases}
print(json.dumps({"results": results, "passed": sum(v == "passed" for v in results.values()),
                  "failed": sum(v in ("failure", "error") for v in results.values())}, indent=2))
PY
  tail -3 "$out/gpu_tests.txt" >&2
  return $status
}

recipe() {  # validation only at the end; the run's bound is time
  local extra=()
  for option in ${EXTRA:-}; do extra+=(--set "$option"); done
  "$here/recipes/multi30k.sh" --src en --tgt de --profile gpu --data-dir "$data" --run-dir "$out/en-de" \
    --set train.max_minutes="$minutes" --set train.valid_every=1000000 --set train.device="$device" "${extra[@]}" \
    2> "$out/recipe_en-de.log" | tail -1 > "$out/recipe_en-de.json"
  local status=${PIPESTATUS[0]}
  tail -2 "$out/recipe_en-de.log" >&2
  return "$status"
}
export -f gpu_tests recipe

# shellcheck disable=SC2086  # the *_ARGS are lists of options
stage tests 120 gpu_tests
stage train 210 python "$here/bench/train_speed.py" --data "$data" --device "$device" $train_args \
  --json "$out/train_speed_$device.json"
stage recipe $((minutes * 60 + 120)) recipe
if [[ -d "$out/en-de/checkpoints" ]]; then
  stage decode 90 python "$here/bench/decode.py" --model "$out/en-de" --src "$(file test_2016_flickr.en)" \
    --ref "$(file test_2016_flickr.de)" --device "$device" $decode_args --json "$out/decode_$device.json"
elif [[ " $stages " == *" decode "* ]]; then
  record decode skipped 0 "no recipe model in $out/en-de"
fi
stage ops 90 python "$here/bench/profile_ops.py" ops --config "$ops_config" --device "$device" $ops_args \
  --json "$out/ops_$device.json"
echo "== done in ${SECONDS}s: $report" >&2
cat "$report"
