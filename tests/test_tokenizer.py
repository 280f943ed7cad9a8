"""SentencePiece training and loading: joint and separate vocabularies, fixed special ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import toy_pairs
from nmt.config import load_config
from nmt.errors import CheckpointError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_tokenizer, prepare_tokenizer


@pytest.mark.parametrize("joint", [True, False])
def test_train_round_trip(tmp_path: Path, joint: bool) -> None:
    config = load_config(None, [f"tokenizer.joint={joint}", f"model.share_embeddings={joint}",
                                "tokenizer.vocab_size=48", "tokenizer.type=bpe"])
    src, tgt = toy_pairs(100)
    tokenizer = prepare_tokenizer(config.tokenizer, tmp_path, src, tgt)
    assert tokenizer.joint is joint
    for processor in (tokenizer.src, tokenizer.tgt):
        assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert tokenizer.decode_tgt(tokenizer.encode_tgt(tgt[:5])) == tgt[:5]
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.encode_src(src[:5]) == tokenizer.encode_src(src[:5])


def test_existing_model_is_copied(tmp_path: Path) -> None:
    config = load_config(None, ["tokenizer.vocab_size=40"])
    first = prepare_tokenizer(config.tokenizer, tmp_path / "a", *toy_pairs(50))
    from dataclasses import replace
    copied = prepare_tokenizer(replace(config.tokenizer, model=str(first.files[0])), tmp_path / "b", [], [])
    assert copied.src_vocab_size == first.src_vocab_size


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path)
