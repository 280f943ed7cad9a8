"""Training data at scale: `nmt train` on synthetic corpora of N pairs, beside the plain `datasets` route.

Each line of a synthetic corpus joins two Multi30k pairs picked by a fixed bijection of the line number
(so lines are unique, length-realistic and the same on every machine). For each N it measures:
  - a cold start (empty cache): preparation per phase (reading and cleaning, tokenizer training,
    tokenizing) with pairs/s, and the peak anonymous memory of the whole process tree (the sum of
    Pss_Anon from /proc/PID/smaps_rollup over nmt and every process it started, sampled every 0.1 s;
    ru_maxrss sees one process and counts mapped file pages, which are page cache),
  - the cache's size on disk,
  - a new run on the warm cache: time from `nmt train` start to the first update,
  - resuming that run mid-epoch: time to its first update,
  - anonymous memory (process tree) after 50 updates,
and, in the same run, the route a `datasets` user would write for the tokenizing phase:
`load_dataset("text")` on both files plus `map(batched=True, num_proc=2)` with the same SentencePiece
model. Multi30k itself (29,000 pairs) gives the baseline for the warm start, the resume and the memory.

    python bench/data_scale.py --multi30k DIR --work /tmp/scale --sizes 1000000 10000000 --json bench/data_scale.json

The model and training settings are the CPU recipe's (recipes/multi30k-cpu.yaml), without validation.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_corpus(multi30k: Path, n: int, out: Path) -> Path:
    """out/train.en and out/train.de: n lines, each two Multi30k pairs joined (written once, then reused)."""
    prefix = out / "train"
    if Path(f"{prefix}.de").is_file():
        return prefix
    out.mkdir(parents=True, exist_ok=True)
    en = gzip.open(multi30k / "train.en.gz", "rt", encoding="utf-8").read().split("\n")[:-1]
    de = gzip.open(multi30k / "train.de.gz", "rt", encoding="utf-8").read().split("\n")[:-1]
    m = len(en)
    space, step = m * m, 1_000_003  # step is coprime with m * m, so line i -> (a, b) is one-to-one
    offset = 123_456_789 % space
    with open(f"{prefix}.en.tmp", "w", encoding="utf-8") as f_en, open(f"{prefix}.de.tmp", "w", encoding="utf-8") as f_de:
        for start in range(0, n, 100_000):
            j = (np.arange(start, min(n, start + 100_000), dtype=np.int64) * step + offset) % space
            pairs = list(zip((j // m).tolist(), (j % m).tolist()))
            f_en.write("".join(f"{en[a]} {en[b]}\n" for a, b in pairs))
            f_de.write("".join(f"{de[a]} {de[b]}\n" for a, b in pairs))
    os.replace(f"{prefix}.en.tmp", f"{prefix}.en")
    os.replace(f"{prefix}.de.tmp", f"{prefix}.de")
    return prefix


def _tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = open(f"/proc/{entry.name}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def anon_memory(root: int) -> int:
    """Bytes of anonymous memory of the process tree under `root` (proportional shares of shared pages)."""
    total = 0
    for pid in _tree(root):
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class MemorySampler(threading.Thread):
    """Samples a process tree's anonymous memory every `interval` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.stop = pid, interval, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, anon_memory(self.pid))
            time.sleep(self.interval)


def _metrics(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


PHASES = {
    "reading": re.compile(r"read and cleaned .*?: ([\d,]+) pairs in ([\d.]+) s"),
    "tokenizer_training": re.compile(r"trained (\S+) in ([\d.]+) s"),
    "tokenizing": re.compile(r"tokenizing .*?: ([\d,]+) pairs in ([\d.]+) s"),
}


def train_run(run_dir: Path, corpus: str, cache: Path, steps: int, extra: list[str]) -> dict:
    """Run `nmt train` until `steps`; time to the first update, memory, and the preparation log's figures."""
    sets = [f"data.train={corpus}", "data.valid=", f"data.cache_dir={cache}", f"train.max_steps={steps}",
            "train.log_every=1", f"train.save_every={steps}", "train.max_minutes=0", *extra]
    command = [sys.executable, "-m", "nmt_cli.main", "train", "--config", str(ROOT / "recipes" / "multi30k-cpu.yaml"),
               "--run-dir", str(run_dir), *[x for s in sets for x in ("--set", s)]]
    before = {r.get("step") for r in _metrics(run_dir)}
    log = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0  # a resumed run appends to its run's log
    started = time.perf_counter()
    with open(log, "a") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        sampler = MemorySampler(process.pid)
        sampler.start()
        first, after = None, None
        while process.poll() is None:
            records = [r for r in _metrics(run_dir) if "loss" in r and r["step"] not in before]
            if records and first is None:
                first = time.perf_counter() - started
            if any(r["step"] == steps for r in records) and after is None:
                after = anon_memory(process.pid)
            time.sleep(0.02)
        sampler.stop.set()
        sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"nmt train failed ({process.returncode}); see {log}")
    with open(log, "rb") as err:
        err.seek(offset)
        text = err.read().decode("utf-8", "replace")  # this run's lines only
    phases = {}
    for name, pattern in PHASES.items():
        found = pattern.findall(text)
        if found:
            phases[name] = {"seconds": sum(float(f[1]) for f in found)}
            if name != "tokenizer_training":
                pairs = sum(int(f[0].replace(",", "")) for f in found)
                phases[name].update(pairs=pairs, pairs_per_s=round(pairs / phases[name]["seconds"]))
    return {"first_update_s": round(first, 2) if first else None, "peak_anon_mib": round(sampler.peak / 2**20),
            "anon_after_updates_mib": round(after / 2**20) if after else None, "phases": phases,
            "wall_s": round(time.perf_counter() - started, 1)}


DATASETS_ROUTE = r'''
import sys, time, datasets, sentencepiece as spm
src, tgt, model, cache = sys.argv[1:5]
datasets.disable_progress_bars()
t0 = time.perf_counter()
ds = datasets.load_dataset("text", data_files={"src": src, "tgt": tgt}, cache_dir=cache)
t1 = time.perf_counter()
sp = spm.SentencePieceProcessor(model_file=model)
def encode(batch):
    return {"ids": sp.encode(batch["text"])}
ds = ds.map(encode, batched=True, num_proc=2, remove_columns=["text"])
t2 = time.perf_counter()
print(len(ds["src"]), t1 - t0, t2 - t1)
'''


def datasets_route(prefix: Path, model: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    process = subprocess.Popen([sys.executable, "-c", DATASETS_ROUTE, f"{prefix}.en", f"{prefix}.de", str(model), str(cache)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = MemorySampler(process.pid)
    sampler.start()
    out, _ = process.communicate()
    sampler.stop.set()
    sampler.join()
    pairs, load, tokenize = out.split()
    pairs, load, tokenize = int(pairs), float(load), float(tokenize)
    shutil.rmtree(cache, ignore_errors=True)
    return {"pairs": pairs, "load_s": round(load, 1), "tokenize_s": round(tokenize, 1),
            "load_pairs_per_s": round(pairs / load), "tokenize_pairs_per_s": round(pairs / tokenize),
            "pairs_per_s": round(pairs / (load + tokenize)), "peak_anon_mib": round(sampler.peak / 2**20)}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(corpus: str, work: Path, name: str, cold_route: bool, steps: int) -> dict:
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    for run in ("cold", "warm"):
        shutil.rmtree(work / "runs" / f"{name}-{run}", ignore_errors=True)
    cold = train_run(work / "runs" / f"{name}-cold", corpus, cache, steps, [])
    result = {"cold": cold, "cache_mib": round(du(cache / "prepared") / 2**20)}
    warm_dir = work / "runs" / f"{name}-warm"
    result["warm"] = train_run(warm_dir, corpus, cache, steps, [])
    result["resume"] = train_run(warm_dir, corpus, cache, steps + 5, [])  # from the last checkpoint, mid-epoch
    if cold_route:
        result["datasets_route"] = datasets_route(Path(corpus), work / "runs" / f"{name}-cold" / "spm.model",
                                                  work / f"hf-cache-{name}")
        phases = cold["phases"]
        ours = phases["reading"]["pairs"] / (phases["reading"]["seconds"] + phases["tokenizing"]["seconds"])
        result["prepare_pairs_per_s"] = round(ours)
        result["prepare_vs_datasets_route"] = round(ours / result["datasets_route"]["pairs_per_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multi30k", type=Path, required=True, help="Directory with Multi30k's train.{en,de}.gz")
    parser.add_argument("--work", type=Path, required=True, help="Scratch directory (corpora, caches, runs)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="Corpus sizes in pairs")
    parser.add_argument("--steps", type=int, default=50, help="Updates of each run (anonymous memory is read after them)")
    parser.add_argument("--json", type=Path, help="Write the results here")
    args = parser.parse_args()
    results: dict = {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
                     "command": " ".join(sys.argv)}
    results["multi30k"] = measure(str(args.multi30k / "train"), args.work, "multi30k", False, args.steps)
    for n in args.sizes:
        prefix = make_corpus(args.multi30k, n, args.work / f"synthetic-{n}")
        results[str(n)] = measure(str(prefix), args.work, str(n), True, args.steps)
        print(json.dumps({str(n): results[str(n)]}), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
