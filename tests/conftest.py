"""Shared fixtures: a rule-based toy language pair, tiny configs, an isolated data cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Toy pair: each source word has one target word; the target keeps the word order but puts
# the last word first, so the model must look at the whole source, not copy position by position.
SRC_WORDS = ["ka", "lu", "mi", "no", "pe", "ri", "su", "to", "va", "ze", "bo", "di"]
TGT_WORDS = ["Haus", "Baum", "Katze", "Hund", "rot", "blau", "groß", "klein", "läuft", "sitzt", "hier", "dort"]
LEXICON = dict(zip(SRC_WORDS, TGT_WORDS))


def toy_translate(sentence: str) -> str:
    words = [LEXICON[w] for w in sentence.split()]
    return " ".join(words[-1:] + words[:-1])


def toy_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    src = [" ".join(rng.choice(SRC_WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    return src, [toy_translate(s) for s in src]


def write_pair(prefix: Path, src: list[str], tgt: list[str], src_lang: str = "xx", tgt_lang: str = "yy") -> Path:
    """PREFIX.SRC_LANG and PREFIX.TGT_LANG, each written whole and renamed into place (processes of a
    distributed test may write the same files at once)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang, lines in ((src_lang, src), (tgt_lang, tgt)):
        tmp = Path(f"{prefix}.{lang}.tmp{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, f"{prefix}.{lang}")
    return prefix


def write_splits(directory: Path, sizes: tuple[int, int, int], src_lang: str = "xx", tgt_lang: str = "yy") -> Path:
    """Toy train, val and test_2016_flickr pairs in DIRECTORY, laid out as the recipes read Multi30k."""
    for (name, seed), n in zip((("train", 1), ("val", 2), ("test_2016_flickr", 3)), sizes):
        write_pair(directory / name, *toy_pairs(n, seed), src_lang, tgt_lang)
    return directory


# A second target language for the same sources: word by word, in the source's order.
ZZ_WORDS = ["maison", "arbre", "chat", "chien", "rouge", "bleu", "grand", "petit", "court", "assis", "ici", "la"]
ZZ_LEXICON = dict(zip(SRC_WORDS, ZZ_WORDS))


def toy_translate_zz(sentence: str) -> str:
    return " ".join(ZZ_LEXICON[w] for w in sentence.split())


def write_multiway(prefix: Path, n: int, seed: int) -> Path:
    """PREFIX.xx, PREFIX.yy and PREFIX.zz: the same toy sources in two target languages (Multi30k's layout)."""
    src, yy = toy_pairs(n, seed)
    write_pair(prefix, src, yy, "xx", "yy")
    Path(f"{prefix}.zz").write_text("".join(toy_translate_zz(s) + "\n" for s in src), encoding="utf-8")
    return prefix


# Small enough to train in seconds on one CPU core, big enough to learn the toy pair.
TINY = [
    "data.src_lang=xx", "data.tgt_lang=yy",
    "tokenizer.vocab_size=64", "tokenizer.type=bpe",
    "model.preset=tiny", "model.dropout=0.1",
    "train.max_tokens=1200", "train.lr=3e-3", "train.warmup_steps=30", "train.label_smoothing=0.0",
    "train.log_every=10", "train.valid_every=100", "train.save_every=50", "train.threads=1",
    "decode.beam=3",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the tokenized-data cache inside the test's temporary tree; one thread keeps timings stable."""
    monkeypatch.setenv("NMT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train/valid/test files of the toy pair; returns the directory."""
    root = tmp_path_factory.mktemp("toy")
    for name, n, seed in (("train", 2000, 1), ("valid", 40, 2), ("test", 40, 3)):
        write_pair(root / name, *toy_pairs(n, seed))
    return root


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a real tokenizer and random tiny weights: fast to load and run."""
    from nmt import checkpoint
    from nmt.config import load_config, save_config
    from nmt.translator import CONFIG_FILE, build_model
    from nmt.tokenizer import prepare_tokenizer

    model_dir = tmp_path_factory.mktemp("untrained")
    config = load_config(None, [*TINY, "model.max_positions=48", "data.max_tokens_per_side=40", "decode.beam=2"])
    src, tgt = toy_pairs(300, seed=5)
    tokenizer = prepare_tokenizer(config.tokenizer, model_dir, src, tgt)
    save_config(config, model_dir / CONFIG_FILE)
    torch.manual_seed(0)
    checkpoint.save_best(model_dir, 0, build_model(config, tokenizer), {})
    return model_dir
