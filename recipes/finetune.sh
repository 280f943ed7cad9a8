#!/usr/bin/env bash
# Fine-tune a pretrained model on software strings, with Multi30k mixed in against forgetting, and print
# one JSON line: software `val` BLEU (programs the training never saw), Multi30k test_2016_flickr BLEU,
# and the share of translations that keep their placeholders, before and after, plus the time taken.
#
#   recipes/finetune.sh --from SOURCE --run-dir RUN [--src en --tgt de] [--scratch] [--set section.key=value ...]
#                       [--domain-dir DIR] [--general-dir DIR]
#
# SOURCE: hub:Helsinki-NLP/opus-mt-en-de (downloaded), a Hugging Face model directory, or an nmt run
# directory (e.g. the Multi30k cpu run, or its `nmt export --format hf`). RUN gets imported/ (the
# model imported, unless SOURCE is an nmt run), data/ (the software strings' training pairs, and a
# dev set of every 40th of them, which chooses the checkpoint), finetuned/ (the fine-tuning run)
# and, with --scratch, scratch/: a model trained from scratch on the same data for the same time.
# Pairs: en with de, fr or cs (recipes/data/software); Multi30k from recipes/data/multi30k.
# --domain-dir DIR fine-tunes on DIR/{train,val}.{src,tgt}[.gz] instead of the software strings, and
# --general-dir DIR mixes in DIR/{train,val,test_2016_flickr}.{src,tgt}[.gz] instead of Multi30k.
# Config: recipes/finetune-software.yaml (24 minutes of training); nothing is downloaded unless
# SOURCE is hub:NAME.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
from="" run_dir="" src=en tgt=de scratch=0 overrides=() software="" multi30k="$here/data/multi30k"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) from="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --src) src="$2"; shift 2 ;;
    --tgt) tgt="$2"; shift 2 ;;
    --scratch) scratch=1; shift ;;
    --domain-dir) software="$2"; shift 2 ;;
    --general-dir) multi30k="$2"; shift 2 ;;
    --set) overrides+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$from" && -n "$run_dir" ]] || { echo "--from and --run-dir are required (see --help)" >&2; exit 2; }
if [[ -z "$software" ]]; then
  software="$here/data/software/$src-$tgt"
  [[ -d "$software" ]] || { echo "the software strings have en-de, en-fr and en-cs, not $src-$tgt" >&2; exit 2; }
fi
file() { [[ -f "$1/$2" ]] && echo "$1/$2" || echo "$1/$2.gz"; }  # DIR NAME: the file, gzipped or not
for f in "$(file "$software" "train.$src")" "$(file "$software" "val.$tgt")" "$(file "$multi30k" "train.$src")" \
         "$(file "$multi30k" "test_2016_flickr.$tgt")"; do
  [[ -f "$f" ]] || { echo "$f: not found" >&2; exit 2; }
done
mkdir -p "$run_dir"
start=$(date +%s)

if [[ -f "$from/config.yaml" ]]; then
  init="$from"
else
  init="$run_dir/imported"
  [[ -f "$init/config.yaml" ]] || nmt import "$from" --run-dir "$init" --src-lang "$src" --tgt-lang "$tgt" >&2
fi

# A dev set from the training programs (every 40th pair) chooses the checkpoint; val's programs stay unseen.
python - "$(file "$software" "train.$src")" "$(file "$software" "train.$tgt")" "$run_dir/data" "$src" "$tgt" <<'PY'
import gzip, sys
from pathlib import Path
source, target, out, src, tgt = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
out.mkdir(parents=True, exist_ok=True)
read = lambda path: (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8").read().splitlines()
sides = {src: read(source), tgt: read(target)}
for name, keep in (("train", lambda i: i % 40 != 39), ("dev", lambda i: i % 40 == 39)):
    for lang, lines in sides.items():
        (out / f"software-{name}.{lang}").write_text("".join(l + "\n" for i, l in enumerate(lines) if keep(i)), encoding="utf-8")
PY

scores() {  # MODEL NAME: software val and Multi30k test scores of a model, as JSON files in RUN
  nmt eval --model "$1" --src "$(file "$software" "val.$src")" --ref "$(file "$software" "val.$tgt")" \
    --src-lang "$src" --tgt-lang "$tgt" --json > "$run_dir/$2.software.json"
  nmt eval --model "$1" --src "$(file "$multi30k" "test_2016_flickr.$src")" --ref "$(file "$multi30k" "test_2016_flickr.$tgt")" \
    --src-lang "$src" --tgt-lang "$tgt" --json > "$run_dir/$2.multi30k.json"
}
scores "$init" before

train_set=(--set data.src_lang="$src" --set data.tgt_lang="$tgt"
  --set "data.train=[{path: $run_dir/data/software-train, weight: 1}, {path: $multi30k/train, weight: 0.25}]"
  --set "data.valid=[{name: software, path: $run_dir/data/software-dev}, {name: multi30k, path: $multi30k/val}]")
nmt train --config "$here/finetune-software.yaml" --run-dir "$run_dir/finetuned" --set model.init="$init" \
  "${train_set[@]}" "${overrides[@]}" | tee /dev/stderr | tail -n 1 > "$run_dir/finetuned.json"  # validation lines, then the summary
scores "$run_dir/finetuned" after
finished=$(date +%s)  # the recipe proper ends here; --scratch's comparison comes on top

if [[ $scratch == 1 ]]; then  # the same data and time from scratch: the Multi30k cpu profile's model
  minutes=$(python -c "import json; print(json.load(open('$run_dir/finetuned.json'))['train_minutes'])")
  nmt train --config "$here/multi30k-cpu.yaml" --run-dir "$run_dir/scratch" "${train_set[@]}" \
    --set train.max_minutes="$minutes" --set train.best_on=software --set train.valid_every=250 \
    --set train.save_every=250 "${overrides[@]}" | tee /dev/stderr | tail -n 1 > "$run_dir/scratch.json"
  scores "$run_dir/scratch" scratch
fi

python - "$run_dir" "$from" "$src-$tgt" "$start" "$scratch" "$finished" <<'PY'
import json, sys, time
run, source, pair, start, scratch, finished = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1", int(sys.argv[6])
load = lambda name: json.load(open(f"{run}/{name}.json"))
stages = ["before", "after"] + (["scratch"] if scratch else [])
trained = load("finetuned")
print(json.dumps({
    "from": source, "pair": pair, "minutes": round((finished - start) / 60, 1),
    **({"scratch_minutes": round((time.time() - finished) / 60, 1)} if scratch else {}),
    "train_minutes": trained["train_minutes"], "steps": trained["step"], "stopped": trained["stopped"],
    "software_val_bleu": {s: load(f"{s}.software")["bleu"] for s in stages},
    "software_val_chrf": {s: load(f"{s}.software")["chrf"] for s in stages},
    "software_placeholders": {s: load(f"{s}.software")["placeholders"] for s in stages},
    "multi30k_test_bleu": {s: load(f"{s}.multi30k")["bleu"] for s in stages},
    "bleu_signature": load("after.software")["bleu_signature"]}))
PY
