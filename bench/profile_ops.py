"""Where the time goes: torch.profiler over training updates or a decoding pass, grouped by operator.

The profiles behind the "why a target is missed" notes in bench/README.md, as one command:

    python bench/profile_ops.py train --data DIR --engine nmt --device cpu --threads 2 --json OUT
    python bench/profile_ops.py decode --model RUN_DIR --src test.en --device cpu --threads 2 --json OUT

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
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nmt import Translator
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
            targets = sum(len(s.corpus.tgt[i]) + 1 for b in batches[args.warmup:] for i in b)
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
    for command in (train, decode):
        command.add_argument("--rows", type=int, default=25, help="operators listed")
        command.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
