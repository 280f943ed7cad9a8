"""Training throughput of nmt's trainer against a Hugging Face MarianMT training loop of the same shape.

Both engines train on the same token-budget batches of a parallel corpus (Multi30k by default),
alternating in rounds so that machine noise hits both alike. Reported: non-padding source+target
tokens per second, peak memory, the nmt/HF ratio and, on CUDA, model FLOP utilisation.

    python bench/train_speed.py --data DIR --device cpu --json bench/train_speed_cpu.json

With `--precisions fp32 bf16` each engine trains in both precisions in the same run (the engines
then are nmt_fp32, hf_fp32, nmt_bf16, hf_bf16): reported are the ratio in each precision and
the ratio of each engine at its best precision.

Needs `transformers` (pip install transformers) besides nmt itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nmt.config import Config, load_config
from nmt.data import TrainingData, make_batches, prepare_corpora, read_corpus
from nmt.model import Transformer, count_parameters
from nmt.tokenizer import EOS_ID, PAD_ID, Tokenizer, prepare_tokenizer
from nmt.train import Trainer


def marian(config, vocab_size: int):
    """A MarianMT model with the same shape as nmt's post-norm transformer."""
    from transformers import MarianConfig, MarianMTModel

    m = config.model
    hf_config = MarianConfig(
        vocab_size=vocab_size, d_model=m.d_model, encoder_layers=m.n_encoder_layers, decoder_layers=m.n_decoder_layers,
        encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads, encoder_ffn_dim=m.d_ff,
        decoder_ffn_dim=m.d_ff, activation_function=m.activation, dropout=m.dropout,
        attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout,
        max_position_embeddings=m.max_positions, scale_embedding=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID, share_encoder_decoder_embeddings=True, tie_word_embeddings=True)
    hf_config._attn_implementation = "sdpa"  # the fused kernel, as nmt uses
    model = MarianMTModel(hf_config)
    assert model.config._attn_implementation == "sdpa"
    return model


class HFLoop:
    """The training step a transformers user writes: forward, label-smoothed loss, backward, clip, AdamW."""

    def __init__(self, model, config, corpus, device: torch.device, bf16: bool) -> None:
        self.model, self.config, self.corpus, self.device, self.bf16 = model.to(device), config, corpus, device, bf16
        t = config.train
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                           fused=device.type == "cuda" or None)

    def step(self, batch: list[int]) -> None:
        self.model.train()
        x = self.corpus.collate(np.asarray(batch), PAD_ID)
        x = {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            logits = self.model(input_ids=x["src"], attention_mask=x["src"] != PAD_ID,
                                decoder_input_ids=x["tgt_in"]).logits
        n_target = int((x["tgt_out"] != PAD_ID).sum())
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x["tgt_out"].view(-1), ignore_index=PAD_ID,
                               label_smoothing=self.config.train.label_smoothing, reduction="sum") / n_target
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def tokens(corpus, batch: list[int]) -> int:
    rows = np.asarray(batch)
    return int(corpus.src_lengths[rows].sum(dtype=np.int64) + corpus.tgt_lengths[rows].sum(dtype=np.int64)) + 2 * len(rows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run, batches, corpus, device) -> tuple[float, int]:
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    synchronize(device)
    return time.perf_counter() - start, sum(tokens(corpus, b) for b in batches)


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (the MFU denominator on CUDA)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    synchronize(device)
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ a
    synchronize(device)
    return 2 * 8192 ** 3 * n / (time.perf_counter() - start)


@dataclass
class Setup:
    """What every engine trains on: the config, the tokenized corpus and its token-budget batches."""
    config: Config
    tokenizer: Tokenizer
    corpus: TrainingData
    batches: list[list[int]]
    device: torch.device
    bf16: bool
    work: Path


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="directory with train.SRC/.TGT (gz or not)")
    parser.add_argument("--src", default="en", help="source language")
    parser.add_argument("--tgt", default="de", help="target language")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    parser.add_argument("--shape", default=None, help="model preset (default: small on cpu, base on cuda)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per batch (default 6000 cpu, 25000 cuda)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary trained on the data")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override on top of the benchmark's (repeatable), e.g. model.d_ff=512")


def setup(args: argparse.Namespace) -> Setup:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = args.shape or ("small" if device.type == "cpu" else "base")
    bf16 = (args.precision or ("fp32" if device.type == "cpu" else "bf16")) == "bf16"
    max_tokens = args.max_tokens or (6000 if device.type == "cpu" else 25000)
    config = load_config(None, [f"model.preset={shape}", "model.norm_first=false", f"train.max_tokens={max_tokens}",
                                f"train.precision={'bf16' if bf16 else 'fp32'}", f"tokenizer.vocab_size={args.vocab_size}",
                                f"data.train={Path(args.data) / 'train'}", f"data.src_lang={args.src}",
                                f"data.tgt_lang={args.tgt}", *args.overrides])
    src, tgt = read_corpus(str(Path(args.data) / "train"), args.src, args.tgt)
    work = Path(tempfile.mkdtemp(prefix="nmt-bench-"))
    tokenizer = prepare_tokenizer(config.tokenizer, work, src, tgt)
    corpus = prepare_corpora(replace(config.data, cache_dir=str(work / "cache")), tokenizer)
    batches = make_batches(corpus.src_lengths, corpus.tgt_lengths, max_tokens, 1, 0)
    return Setup(config, tokenizer, corpus, batches, device, bf16, work)


def parse_engine(name: str) -> tuple[str, bool, str]:
    """nmt, nmt_compiled, hf, any of them with _fp32 or _bf16 after it -> (nmt or hf, compiled, precision or "")."""
    engine, _, rest = name.partition("_")
    return engine, rest.startswith("compiled"), rest.removeprefix("compiled").strip("_")


def make_engines(s: Setup, names: list[str]) -> dict[str, tuple[Callable[[list[int]], None], torch.nn.Module]]:
    """Each engine's training step on one batch, and its model; every model starts from seed 1.

    Names as `parse_engine` reads them; without a precision, the setup's (hf_bf16: the HF loop under
    bf16 autocast)."""
    engines = {}
    for name in names:
        torch.manual_seed(1)
        engine, compiled, precision = parse_engine(name)
        bf16 = s.bf16 if not precision else precision == "bf16"
        if engine == "hf":
            loop = HFLoop(marian(s.config, s.tokenizer.src_vocab_size), s.config, s.corpus, s.device, bf16)
            engines[name] = (loop.step, loop.model)
            continue
        model = Transformer(s.config.model, s.tokenizer.src_vocab_size, s.tokenizer.tgt_vocab_size)
        train_config = replace(s.config.train, compile=compiled, precision="bf16" if bf16 else "fp32")
        trainer = Trainer(model, train_config, s.work / name, s.corpus, device=s.device)
        engines[name] = (_update_step(trainer), model)
    return engines


def _update_step(trainer: Trainer) -> Callable[[list[int]], None]:
    return lambda batch: trainer._update([batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per engine per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per engine before the first round")
    parser.add_argument("--compile", action="store_true", help="also time nmt with train.compile (torch.compile)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="train each engine in each of these precisions in the same run (default: --precision alone)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    s = setup(args)
    config, tokenizer, corpus, device, bf16 = s.config, s.tokenizer, s.corpus, s.device, s.bf16
    needed = args.warmup + args.rounds * args.steps
    batches = (s.batches * (needed // len(s.batches) + 1))[:needed]
    names = ["nmt", "hf"] + (["nmt_compiled"] if args.compile else [])
    if args.precisions:
        names = [f"{name}_{precision}" for precision in args.precisions for name in names]
    built = make_engines(s, names)
    engines = {name: run for name, (run, _) in built.items()}
    ours = built[names[0]][1]
    shape, max_tokens = config.model.preset, config.train.max_tokens

    warmup = {name: timed(run, batches[: args.warmup], corpus, device) for name, run in engines.items()}
    warmup_seconds = {name: round(seconds, 1) for name, (seconds, _) in warmup.items()}
    totals = {name: [0.0, 0] for name in engines}
    peaks = {}
    for r in range(args.rounds):
        chunk = batches[args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
        for name, run in engines.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, n = timed(run, chunk, corpus, device)
            totals[name][0] += seconds
            totals[name][1] += n
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        if device.type == "cpu" else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": args.device, "shape": shape,
        "precision": " ".join(args.precisions) if args.precisions else "bf16" if bf16 else "fp32", "max_tokens": max_tokens, "steps_timed": args.rounds * args.steps,
        "parameters": count_parameters(ours), "command": " ".join(sys.argv),
        "warmup_seconds": warmup_seconds,  # the first steps, compiling included
    }
    for name, (seconds, n) in totals.items():
        result[f"{name}_tokens_per_s"] = round(n / seconds)
        if name in peaks:
            result[f"{name}_peak_memory_mib"] = round(peaks[name] / 2 ** 20)
    if args.precisions:
        for precision in args.precisions:
            result[f"ratio_nmt_over_hf_{precision}"] = round(
                result[f"nmt_{precision}_tokens_per_s"] / result[f"hf_{precision}_tokens_per_s"], 3)
        best = {engine: max(args.precisions, key=lambda p: result[f"{engine}_{p}_tokens_per_s"]) for engine in ("nmt", "hf")}
        result["best_precision"] = best
        result["ratio_nmt_over_hf_each_at_best"] = round(
            result[f"nmt_{best['nmt']}_tokens_per_s"] / result[f"hf_{best['hf']}_tokens_per_s"], 3)
    else:
        result["ratio_nmt_over_hf"] = round(result["nmt_tokens_per_s"] / result["hf_tokens_per_s"], 3)
    # Whole run: the first steps (new shapes, compiling) included, as a real run pays them.
    for name, (seconds, n) in totals.items():
        result[f"{name}_whole_run_tokens_per_s"] = round((n + warmup[name][1]) / (seconds + warmup[name][0]))
    for name in engines:
        engine, _, precision = parse_engine(name)
        if engine != "hf":
            hf = f"hf_{precision}" if precision else "hf"  # the same precision's HF engine
            result[f"ratio_{name}_over_{hf}_whole_run"] = round(
                result[f"{name}_whole_run_tokens_per_s"] / result[f"{hf}_whole_run_tokens_per_s"], 3)
    if args.compile and not args.precisions:
        result["ratio_nmt_compiled_over_hf"] = round(result["nmt_compiled_tokens_per_s"] / result["hf_tokens_per_s"], 3)
    if device.type == "cpu":
        result["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    else:
        # Training FLOPs per token: 6 x non-embedding parameters (forward + backward), plus the
        # output projection (6 x d_model x vocab) for target tokens, counted here for all tokens/2.
        m = config.model
        body = count_parameters(ours) - tokenizer.src_vocab_size * m.d_model
        flops_per_token = 6 * body + 6 * m.d_model * tokenizer.tgt_vocab_size / 2
        peak = matmul_peak(device)
        result["flops_per_token"] = flops_per_token
        result["measured_bf16_matmul_peak_tflops"] = round(peak / 1e12, 1)
        for name in engines:
            result[f"{name}_mfu"] = round(result[f"{name}_tokens_per_s"] * flops_per_token / peak, 4)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
