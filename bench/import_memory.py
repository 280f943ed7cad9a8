"""Peak memory of `nmt import` and `nmt translate` on an NLLB-200-600M-shaped model, against the size of its weights.

The model is made here with transformers' M2M100Config in NLLB-600M's shape (d_model 1024, 12+12
layers, 16 heads, FFN 4096, 256,206 ids) with random weights (memory does not care what they are)
and a small SentencePiece model with three language codes; `nmt import` then converts it and `nmt
translate` translates a few sentences with it. Each runs as a process of its own under
`/usr/bin/time -v`, whose maximum resident set size is the figure (no worker processes: the whole
process tree is that one process).

    python bench/import_memory.py --json bench/import_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SENTENCES = ["the house is red", "a small dog runs here", "the cat sits on the tree"] * 4


def make_model(directory: Path) -> int:
    """Write the NLLB-shaped model; return its parameter count."""
    import random

    import sentencepiece as spm
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    directory.mkdir(parents=True)
    rng = random.Random(0)
    words = "the a house tree cat dog red blue big small runs sits here there and is on".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(400)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(directory / "bpe"), vocab_size=50,
                                   model_type="bpe", minloglevel=2)
    shutil.move(directory / "bpe.model", directory / "sentencepiece.bpe.model")
    (directory / "bpe.vocab").unlink()
    tokenizer = NllbTokenizer.from_pretrained(directory, src_lang="eng_Latn",
                                              extra_special_tokens=["eng_Latn", "deu_Latn", "fra_Latn"])
    tokenizer.save_pretrained(directory)
    config = M2M100Config(vocab_size=256_206, d_model=1024, encoder_layers=12, decoder_layers=12,
                          encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                          decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
                          activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2, dropout=0.1)
    model = M2M100ForConditionalGeneration(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak resident set size in GiB, seconds) of one command, from /usr/bin/time -v."""
    started = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kib / 2 ** 20, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="where to write the model (default: a temporary dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nmt-import-memory-"))
    hf_dir, run_dir = work / "hf", work / "run"
    parameters = make_model(hf_dir)
    weights_gib = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 2 ** 30
    nmt = [sys.executable, "-m", "nmt_cli.main"]
    import_gib, import_s = peak_rss([*nmt, "import", str(hf_dir), "--run-dir", str(run_dir), "--src-lang", "eng_Latn",
                                     "--tgt-lang", "deu_Latn"])
    source = work / "in.txt"
    source.write_text("\n".join(SENTENCES) + "\n")
    translate_gib, translate_s = peak_rss([*nmt, "translate", "--model", str(run_dir), "--input", str(source),
                                           "--output", str(work / "out.txt"), "--device", "cpu", "--beam", "5"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_bf16")}),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "command": " ".join(sys.argv),
        "model": "M2M100 in NLLB-200-600M's shape, random weights", "parameters": parameters,
        "weights_gib": round(weights_gib, 2),
        "import_peak_rss_gib": round(import_gib, 2), "import_seconds": round(import_s, 1),
        "import_over_weights": round(import_gib / weights_gib, 2),
        "translate_peak_rss_gib": round(translate_gib, 2), "translate_seconds": round(translate_s, 1),
        "translate_over_weights": round(translate_gib / weights_gib, 2), "sentences": len(SENTENCES),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
