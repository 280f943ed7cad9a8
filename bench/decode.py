"""Decoding speed on identical weights: nmt against Hugging Face `generate` and CTranslate2.

Exports the model to a MarianMT directory, converts that for CTranslate2 (when installed), then
decodes the same sentences with beam 5 by every engine, each pass in a process of its own (loading
and a short warm-up untimed), engines alternating within each round, and reports sentences/s,
target tokens/s, the peak memory of each engine's process, and sacreBLEU.

    python bench/decode.py --model RUN_DIR --src test.en --ref test.de --device cpu --json bench/decode_cpu.json

Needs `pip install 'nmt[export]'` (transformers and ctranslate2; without ctranslate2 its rows are left out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from nmt import Translator
from nmt.data import pad, read_lines
from nmt.decode import output_limits
from nmt.evaluate import bleu
from nmt.export import export_ct2, export_hf, exported_id, nmt_id
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def sentence_limits(limits: torch.Tensor, eos: int):
    """A `generate` logits processor: EOS as the only continuation of a beam row whose sentence is at
    its output limit (`limits`, one per row, EOS counted), nmt's rule. `max_new_tokens` alone would
    give every sentence of a batch the longest one's limit, which changes the outputs of a model
    that runs into its limits."""
    from transformers import LogitsProcessor

    class SentenceLimits(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            at_limit = (input_ids.size(1) >= limits)[:, None]  # input_ids start with the decoder's start token
            only_eos = torch.full_like(scores, float("-inf"))
            only_eos[:, eos] = scores[:, eos]
            return torch.where(at_limit, only_eos, scores)
    return SentenceLimits()


def hf_engine(out: Path, translator: Translator, device: torch.device, beam: int, batch_size: int,
              bf16: bool) -> Callable[[list[str]], list[str]]:
    from transformers import AutoModelForSeq2SeqLM, LogitsProcessorList

    model = AutoModelForSeq2SeqLM.from_pretrained(out, attn_implementation="sdpa").to(device).eval()
    if bf16:
        model = model.to(torch.bfloat16)
    d, tok = translator.config.decode, translator.tokenizer
    V = tok.tgt_vocab_size  # the export orders the vocabulary as Marian does (padding last)

    @torch.no_grad()
    def run(lines: list[str]) -> list[str]:
        limit = translator.config.model.max_positions - 1  # as nmt does: truncate, keep room for EOS
        ids = [s[:limit] for s in tok.encode_src(lines)]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: list[str] = [""] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src = pad([[exported_id(t, V) for t in ids[i] + [EOS_ID]] for i in chunk], exported_id(PAD_ID, V)).to(device)
            limits = output_limits(torch.tensor([len(ids[i]) for i in chunk]), d, translator.config.model.max_positions)
            processor = sentence_limits(limits.repeat_interleave(beam).to(device), exported_id(EOS_ID, V))
            generated = model.generate(input_ids=src, attention_mask=src != exported_id(PAD_ID, V), num_beams=beam,
                                       do_sample=False, early_stopping=True, length_penalty=d.length_penalty,
                                       max_new_tokens=int(limits.max()), suppress_tokens=[exported_id(BOS_ID, V)],
                                       logits_processor=LogitsProcessorList([processor]))
            rows = [[t for t in (nmt_id(e, V) for e in row) if t not in (PAD_ID, BOS_ID, EOS_ID)]
                    for row in generated.tolist()]
            for index, text in zip(chunk, tok.decode_tgt(rows)):
                out[index] = text
        return out
    return run


def ct2_engine(model_dir: Path, work: Path, translator: Translator, compute_type: str, beam: int, batch_size: int,
               threads: int, workers: int = 1) -> Callable[[list[str]], list[str]]:
    import ctranslate2

    target = work / f"ct2-{compute_type}"
    if not target.exists():  # the first round converts; later rounds reuse it
        export_ct2(model_dir, target, compute_type if compute_type != "float32" else None)
    # inter_threads > 1: that many batches decoded at once, each by one thread (as nmt's workers).
    engine = ctranslate2.Translator(str(target), device="cpu", compute_type=compute_type,
                                    intra_threads=threads if workers == 1 else 1, inter_threads=workers)
    d, tok = translator.config.decode, translator.tokenizer

    def run(lines: list[str]) -> list[str]:
        pieces = [tok.src.encode(line, out_type=str) + ["</s>"] for line in lines]
        # nmt's limit a * length + b counts EOS; CTranslate2's does not. Neither produces BOS.
        results = engine.translate_batch(pieces, beam_size=beam, max_batch_size=batch_size, length_penalty=d.length_penalty,
                                         max_decoding_length=int(d.max_len_a * max(len(p) - 1 for p in pieces)) + d.max_len_b - 1,
                                         suppress_sequences=[["<s>"]])
        return [tok.tgt.decode_pieces([p for p in r.hypotheses[0] if p != "</s>"]) for r in results]
    return run


def engine_names(device: torch.device, workers: int) -> list[str]:
    # int8 on CPU, bf16 on CUDA: each device's reduced-precision mode; CTranslate2 rows on CPU. nmt
    # also decodes in bf16 on a CPU (fast where the CPU multiplies bf16 matrices in hardware, AMX);
    # CTranslate2 has no bf16 on a CPU. With workers, nmt (`--workers`) and CTranslate2
    # (`inter_threads`) also decode that many batches at once, one thread each; HF `generate` has no such mode.
    if device.type == "cpu":
        parallel = ([f"{e}_{p}_w{workers}" for p in ("fp32", "int8") for e in ("nmt", "ct2")] + [f"nmt_bf16_w{workers}"]
                    if workers > 1 else [])
        return ["nmt_fp32", "nmt_int8", "nmt_bf16", "hf_fp32", "ct2_fp32", "ct2_int8", *parallel]
    return ["nmt_fp32", "nmt_bf16", "hf_fp32", "hf_bf16"]


def build_engine(name: str, args: argparse.Namespace, work: Path) -> Callable[[list[str]], list[str]]:
    device = torch.device(args.device)
    name, _, workers = name.partition("_w")
    workers = int(workers or 1)
    if name.startswith("nmt"):
        # nmt_fp32 asks for fp32: on CUDA, nmt's default is bf16 (the nmt_bf16 row).
        translator = Translator.load(args.model, device=args.device, quantize="int8" if name == "nmt_int8" else None,
                                     precision="bf16" if name == "nmt_bf16" else "fp32")
        return lambda lines: translator.translate(lines, beam=args.beam, workers=workers)
    ours = Translator.load(args.model, device="cpu")  # the tokenizer and config for the peers
    if name.startswith("hf"):
        return hf_engine(work / "hf", ours, device, args.beam, args.batch_size, bf16=name == "hf_bf16")
    compute_type = {"ct2_fp32": "float32", "ct2_int8": "int8"}[name]
    return ct2_engine(args.model, work, ours, compute_type, args.beam, args.batch_size, torch.get_num_threads(), workers)


def worker(args: argparse.Namespace) -> None:
    """One engine, one pass over the sentences, in a process of its own: prints seconds and peak memory."""
    src = read_lines(args.src)[: args.limit]
    run = build_engine(args.worker, args, args.work)
    run(src[:20])  # warm up: first-call allocations, thread pools
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    outputs = run(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    (args.work / f"{args.worker}.out").write_text("".join(line + "\n" for line in outputs), encoding="utf-8")
    memory = {"process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if children:  # nmt's forked decoding workers: the largest one's peak (they share the model's pages)
        memory["worker_peak_rss_mib"] = round(children / 1024)
    if device.type == "cuda" and not args.worker.startswith("ct2"):
        memory["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps({"seconds": seconds, **memory}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory of a post-norm model")
    parser.add_argument("--src", type=Path, required=True, help="source sentences (test_2016_flickr)")
    parser.add_argument("--ref", type=Path, required=True, help="references for BLEU")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to decode")
    parser.add_argument("--beam", type=int, default=5, help="beam size for every engine")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch for HF and CTranslate2")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the whole set; the rates are "
                        "the median round's")
    parser.add_argument("--limit", type=int, default=1000, help="sentences used")
    parser.add_argument("--workers", type=int, default=2, help="on CPU, also rows for nmt and CTranslate2 decoding "
                        "this many batches at once, one thread each; 1: no such rows")
    parser.add_argument("--engines", default="", help="comma-separated rows to run (e.g. nmt_bf16,hf_fp32,hf_bf16); "
                        "default: every row for the device")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one engine
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    device = torch.device(args.device)
    src, refs = read_lines(args.src)[: args.limit], read_lines(args.ref)[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="nmt-decode-"))
    export_hf(args.model, work / "hf")
    ours = Translator.load(args.model, device="cpu")
    names, skipped = engine_names(device, args.workers), {}
    if args.engines:
        wanted = args.engines.split(",")
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"--engines: {', '.join(unknown)} not among {', '.join(names)}")
        names = [name for name in names if name in wanted]
    if importlib.util.find_spec("ctranslate2") is None:
        names, skipped["ct2"] = [n for n in names if not n.startswith("ct2")], "ctranslate2 not installed"
    for name, why in skipped.items():
        print(f"{name} rows left out: {why}", file=sys.stderr)

    # Every engine runs in a process of its own, engines alternating within each round, so one
    # engine's thread pool or allocator cannot slow the next; loading is not timed.
    seconds: dict[str, list[float]] = {name: [] for name in names}
    memory: dict[str, dict[str, int]] = {name: {} for name in names}
    base = [sys.executable, __file__, "--model", str(args.model), "--src", str(args.src), "--ref", str(args.ref),
            "--device", args.device, "--beam", str(args.beam), "--batch-size", str(args.batch_size),
            "--limit", str(args.limit), "--work", str(work)]
    for _ in range(args.rounds):
        for name in names:
            done = subprocess.run(base + ["--worker", name], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[name].append(found.pop("seconds"))
            for key, value in found.items():
                memory[name][key] = max(memory[name].get(key, 0), value)
    outputs = {name: read_lines(work / f"{name}.out") for name in names}
    result: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads" if device.type == "cpu"
        else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "beam": args.beam, "sentences": len(src),
        "rounds": args.rounds, "command": " ".join(sys.argv), "engines": {}, "skipped": skipped,
    }
    for name in names:
        middle = statistics.median(seconds[name])  # the median round: one slow round (another process) does not count
        target_tokens = sum(len(ids) + 1 for ids in ours.tokenizer.encode_tgt(outputs[name]))
        result["engines"][name] = {
            "sentences_per_s": round(len(src) / middle, 1), "target_tokens_per_s": round(target_tokens / middle),
            "rounds_sentences_per_s": [round(len(src) / t, 1) for t in seconds[name]], **memory[name],
            "bleu": round(bleu(outputs[name], refs), 2)}
        if "hf_fp32" in outputs:  # the same search on the same weights: how many lines come out otherwise
            result["engines"][name]["lines_unlike_hf_fp32"] = sum(a != b for a, b in zip(outputs[name], outputs["hf_fp32"]))
    result.update(ratios(result["engines"], args.workers, device))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def ratios(rows: dict[str, dict], workers: int, device: torch.device) -> dict[str, float]:
    """Sentences/s ratios between the rows that ran."""
    rate = {name: row["sentences_per_s"] for name, row in rows.items()}
    found: dict[str, float] = {}

    def add(key: str, ours: str | float | None, theirs: str | float | None) -> None:
        ours, theirs = rate.get(ours, ours), rate.get(theirs, theirs)  # type: ignore[arg-type]
        if isinstance(ours, float) and isinstance(theirs, float):
            found[key] = round(ours / theirs, 2)

    def best(prefix: str) -> float | None:  # each engine at its best setting here: workers or not
        return max((v for k, v in rate.items() if k.startswith(prefix)), default=None)
    add("ratio_nmt_over_hf", "nmt_fp32", "hf_fp32")
    add("ratio_nmt_over_ct2_fp32", "nmt_fp32", "ct2_fp32")
    add("ratio_nmt_workers_over_hf", f"nmt_fp32_w{workers}", "hf_fp32")
    add("ratio_best_nmt_fp32_over_best_ct2_fp32", best("nmt_fp32"), best("ct2_fp32"))
    add("ratio_best_nmt_int8_over_best_ct2_int8", best("nmt_int8"), best("ct2_int8"))
    add("ratio_nmt_int8_over_ct2_int8", "nmt_int8", "ct2_int8")
    # nmt in bf16 on a CPU against CTranslate2's modes there (it has no bf16 on a CPU).
    add("ratio_best_nmt_bf16_over_best_ct2_fp32", best("nmt_bf16"), best("ct2_fp32"))
    add("ratio_best_nmt_bf16_over_best_ct2_int8", best("nmt_bf16"), best("ct2_int8"))
    add("ratio_nmt_bf16_over_hf_bf16", "nmt_bf16", "hf_bf16")
    if device.type == "cuda":  # each engine's default on a GPU: nmt decodes in bf16, HF `generate` in the model's fp32
        add("ratio_nmt_default_over_hf_default", "nmt_bf16", "hf_fp32")
    if "nmt_fp32" in rows and "hf_fp32" in rows:
        found["bleu_gap_nmt_minus_hf"] = round(rows["nmt_fp32"]["bleu"] - rows["hf_fp32"]["bleu"], 2)
    return found

if __name__ == "__main__":
    main()
