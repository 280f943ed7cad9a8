"""Fine-tuning throughput: nmt's trainer against the training loop Hugging Face's run_translation.py amounts to,
on the same MarianMT-base-shaped model (6+6 layers, d_model 512, 8 heads, FFN 2048, swish, a trained
final_logits_bias, a 58,101-piece vocabulary: OPUS-MT's shape) with the same weights and batches.

The model is made here with transformers' MarianConfig and random weights and saved as OPUS-MT's are
laid out (source.spm, target.spm, vocab.json); `nmt import` reads it, so nmt fine-tunes the imported
model exactly as a user's `model.init` run would, and the HF loop loads the same directory. Both
train on the same token-budget batches of a parallel corpus (Multi30k by default), alternating in
rounds so that machine noise hits both alike; reported are non-padding source+target tokens per
second and the nmt/HF ratios. Hugging Face runs three ways: on nmt's own token-budget batches (the
engines alone compared), and batched as run_translation.py batches (a fixed number of sentences,
padded to the longest): in random order, its default, and with --group_by_length.

    python bench/finetune_speed.py --data recipes/data/multi30k --json bench/finetune_speed_cpu.json

Needs `transformers` besides nmt itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import timed  # noqa: E402 - the same timing as the training benchmark

from nmt import Translator  # noqa: E402
from nmt.config import merge  # noqa: E402
from nmt.data import make_batches, prepare_corpora, read_corpus  # noqa: E402
from nmt.importing.run import import_model  # noqa: E402
from nmt.tokenizer import PAD_ID  # noqa: E402
from nmt.train import Trainer  # noqa: E402

VOCAB = 58_101  # opus-mt-en-de's


def opus_shaped(directory: Path, texts: list[str], vocab_size: int = VOCAB) -> Path:
    """A random MarianMT-base model in OPUS-MT's layout: a SentencePiece model trained on `texts`, its pieces
    then as many unused ones as fill `vocab_size` (the output layer is OPUS-MT's size either way)."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(directory / "spm"), vocab_size=16000,
                                   hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
    pieces = ["</s>", "<unk>", *[processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]]
    pieces += [f"<unused{i}>" for i in range(vocab_size - 1 - len(pieces))] + ["<pad>"]
    (directory / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes((directory / "spm.model").read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({"source_lang": "en", "target_lang": "de"}))
    config = MarianConfig(vocab_size=vocab_size, d_model=512, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                          decoder_ffn_dim=2048, activation_function="swish", scale_embedding=True, dropout=0.1,
                          max_position_embeddings=512, pad_token_id=vocab_size - 1, eos_token_id=0,
                          decoder_start_token_id=vocab_size - 1, forced_eos_token_id=0)
    torch.manual_seed(0)
    model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.1)
        model.final_logits_bias[0, vocab_size - 1] = 0.0
    model.save_pretrained(directory)
    return directory


def sentence_batches(rows: int, per_batch: int, needed: int, lengths: np.ndarray | None, seed: int = 0) -> list[list[int]]:
    """`needed` batches of `per_batch` rows in a random order; with `lengths`, grouped as the Trainer's
    --group_by_length does: random groups of 50 batches' rows, each sorted longest first, then cut. The
    batches returned are a random sample of the epoch's (the Trainer's order starts with the longest)."""
    order = np.random.default_rng(seed).permutation(rows)
    if lengths is not None:
        group = 50 * per_batch
        order = np.concatenate([part[np.argsort(-lengths[part], kind="stable")]
                                for part in np.split(order, range(group, rows, group))])
    out = [order[i: i + per_batch].tolist() for i in range(0, rows - per_batch + 1, per_batch)]
    picked = np.random.default_rng(seed + 1).permutation(len(out))  # a sample of the epoch's batches, not its start
    return [out[i] for i in np.resize(picked, needed)]


class HFLoop:
    """What run_translation.py's Seq2SeqTrainer does per step, written out: forward with labels' shifted decoder
    inputs, label-smoothed cross-entropy, backward, clipping, AdamW; the model as from_pretrained loads it."""

    def __init__(self, hf_dir: Path, to_hf: torch.Tensor, config, corpus) -> None:
        from transformers import MarianMTModel

        self.model = MarianMTModel.from_pretrained(hf_dir, attn_implementation="sdpa")
        self.to_hf, self.config, self.corpus = to_hf, config, corpus
        self.pad = self.model.config.pad_token_id
        t = config.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)

    def step(self, batch: list[int]) -> None:
        self.model.train()
        x = self.corpus.collate(np.asarray(batch), PAD_ID)  # nmt's ids, mapped onto the model's own
        src, tgt_in, tgt_out = (self.to_hf[x[k]] for k in ("src", "tgt_in", "tgt_out"))
        logits = self.model(input_ids=src, attention_mask=x["src"] != PAD_ID, decoder_input_ids=tgt_in).logits
        n_target = int((x["tgt_out"] != PAD_ID).sum())
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt_out.view(-1), ignore_index=self.pad,
                               label_smoothing=self.config.train.label_smoothing, reduction="sum") / n_target
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory with train.SRC/.TGT (gz or not)")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--max-tokens", type=int, default=4000, help="token budget of a batch (source + target)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per engine per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per engine first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="nmt-finetune-bench-"))
    src, tgt = read_corpus(str(Path(args.data) / "train"), args.src, args.tgt)
    started = time.perf_counter()
    hf_dir = opus_shaped(work / "hf", src[:20000] + tgt[:20000])
    import_model(str(hf_dir), work / "imported", args.src, args.tgt)
    imported = Translator.load(work / "imported", device="cpu")
    setup_seconds = time.perf_counter() - started
    config = merge({"train": {"max_tokens": args.max_tokens, "precision": "fp32", "lr": 1e-4, "warmup_steps": 0},
                    "data": {"train": str(Path(args.data) / "train"), "cache_dir": str(work / "cache")}},
                   imported.config)
    tokenizer = imported.tokenizer
    corpus = prepare_corpora(replace(config.data), tokenizer, quiet=True)
    batches = make_batches(corpus.src_lengths, corpus.tgt_lengths, args.max_tokens, 1, 0)
    needed = args.warmup + args.rounds * args.steps
    batches = (batches * (needed // len(batches) + 1))[:needed]
    vocab = tokenizer.vocab
    hf_vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    to_hf = torch.tensor([hf_vocab.get(piece, hf_vocab["<unk>"]) for piece in vocab.source])

    # Hugging Face's own batching, as run_translation.py does it: a fixed number of sentences a batch (here the
    # mean of nmt's batches, so both see as many sentences per update), padded to the batch's longest; in
    # random order (its default), or with --group_by_length (batches of similar source length).
    per_batch = max(1, round(sum(map(len, batches[:needed])) / needed))
    sides = (np.asarray(corpus.src_lengths), np.asarray(corpus.tgt_lengths))
    engine_batches = {"nmt": batches, "hf_same_batches": batches,
                      "hf_sentences": sentence_batches(len(sides[0]), per_batch, needed, None),
                      "hf_group_by_length": sentence_batches(len(sides[0]), per_batch, needed, sides[0])}

    trainer = Trainer(imported.model.train(), config.train, work / "run", corpus, device=torch.device("cpu"))
    hf = HFLoop(hf_dir, to_hf, config, corpus)
    engines = {"nmt": lambda batch: trainer._update([batch]), "hf_same_batches": hf.step, "hf_sentences": hf.step,
               "hf_group_by_length": hf.step}
    totals = {name: [0.0, 0] for name in engines}
    padding = {name: [0, 0] for name in engines}  # (real, padded) tokens of the timed batches
    for name, run in engines.items():
        timed(run, engine_batches[name][: args.warmup], corpus, torch.device("cpu"))
    for r in range(args.rounds):
        for name, run in engines.items():
            chunk = engine_batches[name][args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
            for batch in chunk:
                rows = np.asarray(batch)
                for lengths in sides:
                    sizes = lengths[rows]
                    padding[name][0] += int(sizes.sum())
                    padding[name][1] += int(sizes.max()) * len(rows)
            seconds, n = timed(run, chunk, corpus, torch.device("cpu"))
            totals[name][0] += seconds
            totals[name][1] += n
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_bf16")}),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "command": " ".join(sys.argv),
        "model": "MarianMT-base shape: 6+6 layers, d_model 512, FFN 2048, swish, final_logits_bias, vocabulary 58,101",
        "parameters": sum(p.numel() for p in imported.model.parameters()), "precision": "fp32 (both)",
        "max_tokens": args.max_tokens, "steps_timed": args.rounds * args.steps, "setup_seconds": round(setup_seconds),
    }
    result["sentences_per_batch_hf"] = per_batch
    for name, (seconds, n) in totals.items():
        result[f"{name}_tokens_per_s"] = round(n / seconds)
        result[f"{name}_padding_share"] = round(1 - padding[name][0] / padding[name][1], 3)
    for name in engines:
        if name != "nmt":
            result[f"ratio_nmt_over_{name}"] = round(result["nmt_tokens_per_s"] / result[f"{name}_tokens_per_s"], 3)
    result["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
