"""Does a sentence's translation depend on the sentences decoded with it? Per precision.

Translates the first N lines of a file three ways with the same model (all at once; in batches of
`--small`; the first `--alone` lines one at a time) and counts the lines that differ from the
all-at-once output. Batching changes the padded source length and the row counts the kernels see.

    python bench/batch_invariance.py --model runs/en-de --src DIR/test_2016_flickr.en.gz --json OUT.json
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import platform
from pathlib import Path

import torch

from nmt import Translator


def read_lines(path: Path, n: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n), f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory made by `nmt train`")
    parser.add_argument("--src", type=Path, required=True, help="source sentences, one per line (.gz or plain)")
    parser.add_argument("--lines", type=int, default=200, help="how many lines of --src to translate")
    parser.add_argument("--small", type=int, default=7, help="sentences per batch in the second pass")
    parser.add_argument("--alone", type=int, default=60, help="how many of the lines to translate one at a time")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--beam", type=int, default=5, help="beam size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the counts here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = read_lines(args.src, args.lines)
    result = {"what": "lines whose translation changes with the batch", "command": "python bench/batch_invariance.py "
              f"--model {args.model} --src {args.src} --lines {args.lines} --small {args.small} --alone {args.alone}",
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "machine": platform.machine(),
              "threads": args.threads, "lines": len(lines), "beam": args.beam, "precisions": {}}
    for precision in args.precisions:
        translator = Translator.load(args.model, device="cpu", precision=precision)
        together = translator.translate(lines, beam=args.beam)
        small = [out for i in range(0, len(lines), args.small) for out in translator.translate(lines[i:i + args.small], beam=args.beam)]
        alone = [translator.translate([line], beam=args.beam)[0] for line in lines[:args.alone]]
        counts = {f"batches_of_{args.small}": sum(a != b for a, b in zip(together, small)),
                  "one_at_a_time": sum(a != b for a, b in zip(together, alone)), "one_at_a_time_of": len(alone)}
        result["precisions"][precision] = counts
        print(precision, counts, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
