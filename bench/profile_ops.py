"""Where the time goes: torch.profiler over training updates or a decoding pass, grouped by operator;
and how many operators one training update dispatches.

The profiles behind the "why a target is missed" notes in bench/README.md, as one command:

    python bench/profile_ops.py train --data DIR --engine nmt --device cpu --threads 2 --json OUT
    python bench/profile_ops.py decode --model RUN_DIR --src test.en --device cpu --threads 2 --json OUT
    python bench/profile_ops.py ops --config recipes/multi30k-gpu.yaml --device cpu --json OUT

`ops` counts the operators of one update of a config's model under bf16 autocast (eager, then
compiled), on random token batches of the config's token budget: see `count_update`.

`train` profiles updates of bench/train_speed.py's setup (same shapes, same batches; `--engine hf`
for the MarianMT loop), `decode` one `nmt` translation pass over the first `--limit` sentences
(beam 5). Printed: the operators with the most self time (on CUDA: the GPU kernels with the most
device time), and the shares of matrix multiplies and attention. On a CPU the training profile
also gives the matrix multiplies' FLOP/s, to set against the machine's best.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from nmt import Translator
from nmt import train as nmt_train
from nmt.data import read_lines

from train_speed import add_setup_arguments, make_engines, setup, synchronize

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}
MATMUL_KERNELS = ("gemm", "cutlass", "xmma", "cublas")  # CUDA kernel names
ATTENTION = ("scaled_dot_product", "flash", "fmha", "efficient_attention", "cudnn_attention")


def self_time(event, cuda: bool) -> float:
    """Microseconds: self CPU time, or on CUDA the kernel time on the device."""
    if not cuda:
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def summarise(prof, cuda: bool, rows: int) -> dict:
    events = [e for e in prof.key_averages() if self_time(e, cuda) > 0]
    total = sum(self_time(e, cuda) for e in events)

    def share(test) -> float:
        return round(sum(self_time(e, cuda) for e in events if test(e.key)) / total, 4)

    is_matmul = (lambda k: any(m in k.lower() for m in MATMUL_KERNELS)) if cuda else (lambda k: k in MATMUL_OPS)
    events.sort(key=lambda e: -self_time(e, cuda))
    return {
        "time_kind": "device (kernels)" if cuda else "self CPU",
        "total_ms": round(total / 1000, 1),
        "matmul_share": share(is_matmul),
        "attention_share": share(lambda k: any(a in k.lower() for a in ATTENTION)),
        "ops": [{"name": e.key, "calls": e.count, "self_ms": round(self_time(e, cuda) / 1000, 2),
                 "share": round(self_time(e, cuda) / total, 4)} for e in events[:rows]],
    }


def profile_train(args: argparse.Namespace) -> dict:
    s = setup(args)
    run, _ = make_engines(s, [args.engine])[args.engine]
    batches = s.batches[: args.warmup + args.steps]
    for batch in batches[: args.warmup]:
        run(batch)
    synchronize(s.device)
    cuda = s.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for batch in batches[args.warmup:]:
            run(batch)
        synchronize(s.device)
    result = summarise(prof, cuda, args.rows)
    if not cuda:
        # FLOPs from a second pass over the same batches: counting them slows the element-wise
        # ops several times over, so the first pass, which gives the times, does not count.
        with profile(activities=activities, with_flops=True) as counted:
            for batch in batches[args.warmup:]:
                run(batch)
        flops = sum(e.flops for e in counted.key_averages() if e.key in MATMUL_OPS)
        if args.engine == "nmt":
            # The loss accumulates the output projection's weight gradient with addmm_, which the
            # profiler counts as 0 FLOPs: 2 x targets x d_model x vocabulary.
            targets = sum(int(s.corpus.tgt_lengths[np.asarray(b)].sum(dtype=np.int64)) + len(b) for b in batches[args.warmup:])
            flops += 2 * targets * s.config.model.d_model * s.tokenizer.tgt_vocab_size
        seconds = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6
        result["matmul_gflops_per_s"] = round(flops / seconds / 1e9, 1)
        result["square_sgemm_4096_gflops_per_s"] = round(square_sgemm(), 1)
    result.update(engine=args.engine, steps=args.steps, shape=s.config.model.preset,
                  precision="bf16" if s.bf16 else "fp32", max_tokens=s.config.train.max_tokens)
    return result


def square_sgemm(n: int = 4096, repeats: int = 5, trials: int = 3) -> float:
    """fp32 GFLOP/s of an n x n matrix multiply on this CPU, best of `trials` (the yardstick for the matmul rate)."""
    a = torch.randn(n, n)
    a @ a
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def profile_decode(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    translator = Translator.load(args.model, device=args.device, quantize=args.quantize)
    lines = read_lines(args.src)[: args.limit]
    translator.translate(lines[:20], beam=args.beam)  # warm up
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        translator.translate(lines, beam=args.beam)
        synchronize(device)
    result = summarise(prof, cuda, args.rows)
    result.update(sentences=len(lines), beam=args.beam, quantize=args.quantize)
    return result


# Operators that only make a new view of a tensor (or record a call): no kernel on any device.
VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "slice", "select", "unsqueeze", "squeeze",
         "detach", "alias", "as_strided", "unbind", "split", "split_with_sizes", "chunk", "lift_fresh",
         "_reshape_alias", "unflatten", "_record_function_enter_new", "_record_function_exit"}
CASTS = {"_to_copy"}
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "mv", "addmv"}


class _Operators(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (only the outermost: what Python calls), by name.

    It lets torch.compile run as it would (`ignore_compile_internals`): of a compiled graph it sees
    the operators the graph calls (matrix multiplies, attention), not inductor's own kernels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _as_on_cuda() -> None:
    """Make a CPU update dispatch what a CUDA one would where the code differs by device: dropout as the
    one fused `native_dropout` (the CPU path makes its own mask), loss chunks of 2^25 logits, and none
    of bf16's CPU workarounds (`nmt.precision.CPU_BF16_WORKAROUNDS`)."""
    from nmt import model, precision
    from nmt.train import loop

    precision.CPU_BF16_WORKAROUNDS = False
    model.Dropout.forward = lambda self, x: torch.native_dropout(x, self.p, True)[0] if self.p and self.training else x
    loss = loop.label_smoothed_loss
    loop.label_smoothed_loss = lambda h, w, t, s, chunk_elements=None: loss(h, w, t, s, chunk_elements or 2 ** 25)


def _random_corpus(vocab: int, max_tokens: int, work: Path, seed: int = 0):
    """One batch worth of random sentence pairs, 10-18 tokens a side (Multi30k's range), filling `max_tokens`."""
    from nmt.data import token_pairs

    rng = random.Random(seed)
    src, tgt, tokens = [], [], 0
    while True:
        pair = [[rng.randrange(4, vocab) for _ in range(rng.randint(10, 18))] for _ in range(2)]
        if tokens + 2 * 19 > max_tokens:  # padded to the longest, with EOS or the start token
            return token_pairs(src, tgt, work / "tokens.arrow")
        src.append(pair[0])
        tgt.append(pair[1])
        tokens += 2 * 19


def count_update(config_path: Path, device: torch.device, compiled: bool, as_on_cuda: bool) -> dict:
    """Operators of one update (after two that warm up and compile) of the config's model under bf16 autocast.

    Eager, every operator is counted; compiled, the operators outside inductor's kernels plus the
    kernels it generated (profiled calls). With `as_on_cuda` on a CPU the attention dropout is 0, so
    SDPA is the one fused kernel (with dropout the CPU falls back to several operators; CUDA's kernels
    take it as they are), see also `_as_on_cuda`.
    """
    from nmt.config import load_config
    from nmt.model import Transformer

    overrides = ["train.precision=bf16", f"train.compile={str(compiled).lower()}", "train.loader_workers=0"]
    if as_on_cuda:
        overrides.append("model.attention_dropout=0.0")
    config = load_config(config_path, overrides)
    vocab = config.tokenizer.vocab_size
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model, vocab, vocab)
    with tempfile.TemporaryDirectory() as work:
        corpus = _random_corpus(vocab, config.train.max_tokens, Path(work))
        trainer = nmt_train.Trainer(model, config.train, Path(work), corpus, device=device)
        group = [np.arange(len(corpus))]
        collated = nmt_train.collate_group(corpus, group, model.start_id)
        started = time.perf_counter()
        for _ in range(2):
            trainer._update(group, collated)
        synchronize(device)
        warmup = time.perf_counter() - started
        inductor_config.cpp.enable_kernel_profile = True  # inductor's CPU kernels then show in the profiler
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof, _Operators() as seen:
            trainer._update(group, collated)
            synchronize(device)
    counts = seen.counts
    generated = sum(1 for e in prof.events() if "cpp_fused" in e.name or e.name.startswith(("triton_", "graph_")))
    operators = sum(n for name, n in counts.items() if name not in VIEWS)
    result = {"compiled": compiled, "sentences": len(corpus), "dispatched": sum(counts.values()),
              "operators": operators + generated, "inductor_kernels": generated,
              "casts": sum(counts[n] for n in CASTS), "matmuls": sum(counts[n] for n in MATMULS),
              "warmup_s": round(warmup, 1),
              "top": [[name, n] for name, n in counts.most_common() if name not in VIEWS][:15]}
    if device.type == "cuda":  # what the device itself ran: kernel launches
        result["cuda_kernels"] = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return result


def count_ops(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    as_on_cuda = device.type == "cpu"
    if as_on_cuda:
        _as_on_cuda()
    modes = {"eager": False, "compiled": True} if args.compiled else {"eager": False}
    counts = {name: count_update(args.config, device, compiled, as_on_cuda) for name, compiled in modes.items()}
    return {"config": str(args.config), "as_on_cuda": as_on_cuda, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    train = commands.add_parser("train", help="profile training updates (bench/train_speed.py's setup)")
    add_setup_arguments(train)
    train.add_argument("--engine", default="nmt", choices=["nmt", "nmt_compiled", "hf"], help="whose training step")
    train.add_argument("--steps", type=int, default=4, help="updates profiled")
    train.add_argument("--warmup", type=int, default=2, help="updates run first, not profiled")
    decode = commands.add_parser("decode", help="profile one nmt translation pass")
    decode.add_argument("--model", type=Path, required=True, help="run directory")
    decode.add_argument("--src", type=Path, required=True, help="source sentences")
    decode.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to decode")
    decode.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    decode.add_argument("--limit", type=int, default=300, help="sentences translated")
    decode.add_argument("--beam", type=int, default=5, help="beam size")
    decode.add_argument("--quantize", default=None, choices=["int8", "bf16"], help="as nmt translate --quantize")
    ops = commands.add_parser("ops", help="count the operators of one training update (eager and compiled)")
    ops.add_argument("--config", type=Path, default=Path(__file__).parent.parent / "recipes" / "multi30k-gpu.yaml",
                     help="config whose model and token budget are counted")
    ops.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the update runs")
    ops.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ops.add_argument("--no-compiled", dest="compiled", action="store_false", help="count eager only (compiling takes minutes on a CPU)")
    for command in (train, decode, ops):
        command.add_argument("--rows", type=int, default=25, help="operators listed")
        command.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.what == "ops":
        _report_ops(args, count_ops(args))
        return
    result = profile_train(args) if args.what == "train" else profile_decode(args)
    result = {"what": args.what, "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine() if args.device == "cpu" else torch.cuda.get_device_name(), **result}
    print(f"{result['what']}: {result['time_kind']} time {result['total_ms']} ms; matrix multiplies "
          f"{result['matmul_share']:.1%}, attention {result['attention_share']:.1%}")
    if "matmul_gflops_per_s" in result:
        print(f"matrix multiplies at {result['matmul_gflops_per_s']} GFLOP/s; "
              f"a 4096-square fp32 one here: {result['square_sgemm_4096_gflops_per_s']}")
    for op in result["ops"]:
        print(f"{op['share']:7.2%} {op['self_ms']:10.1f} ms {op['calls']:7d}  {op['name'][:90]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _report_ops(args: argparse.Namespace, result: dict) -> None:
    result = {"what": "ops", "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "machine": platform.machine() if args.device == "cpu" else torch.cuda.get_device_name(), **result}
    for name in ("eager", "compiled"):
        if name in result:
            r = result[name]
            print(f"{name}: {r['operators']} operators per update ({r['casts']} casts, {r['matmuls']} matrix multiplies, "
                  f"{r['inductor_kernels']} inductor kernels; {r['dispatched']} dispatched with views)"
                  + (f", {r['cuda_kernels']} CUDA kernels" if "cuda_kernels" in r else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
