"""Training: loss, schedule, learning, checkpoints, and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import toy_pairs
from nmt import checkpoint
from nmt.config import load_config
from nmt.data import collate, tokenize_corpus
from nmt.errors import CheckpointError
from nmt.model import Transformer
from nmt.tokenizer import PAD_ID, prepare_tokenizer
from nmt.train import Trainer, inverse_sqrt, label_smoothed_loss


def test_label_smoothed_loss_matches_definition() -> None:
    logits = torch.randn(2, 3, 7)
    target = torch.tensor([[1, 4, PAD_ID], [6, 2, 5]])
    loss, nll = label_smoothed_loss(logits, target, 0.2)
    log_probs = torch.log_softmax(logits, -1)
    mask = target != PAD_ID
    expected_nll = -log_probs.gather(-1, target[..., None])[..., 0][mask].sum()
    expected = 0.8 * expected_nll + 0.2 * (-log_probs.mean(-1)[mask].sum())
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected)


def test_inverse_sqrt_schedule() -> None:
    factor = inverse_sqrt(100)
    assert factor(0) == pytest.approx(0.01) and factor(99) == pytest.approx(1.0)
    assert factor(399) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert factor(199) > factor(399)


def make_trainer(run_dir: Path, *overrides: str) -> Trainer:
    config = load_config(None, ["model.preset=tiny", "tokenizer.vocab_size=48", "train.max_tokens=400",
                                "train.log_every=2", "train.save_every=3", "train.valid_every=1000",
                                "train.warmup_steps=5", "train.lr=2e-3", "model.dropout=0.1", *overrides])
    src, tgt = toy_pairs(120)
    tokenizer = prepare_tokenizer(config.tokenizer, run_dir, src, tgt, reuse=(run_dir / "spm.model").exists())
    corpus = tokenize_corpus(src, tgt, tokenizer, config.data, "toy")
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    return Trainer(model, config.train, run_dir, corpus)


def test_loss_falls_on_one_batch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "model.dropout=0.0")
    batch = list(range(16))
    x = collate([trainer.corpus.src[i] for i in batch], [trainer.corpus.tgt[i] for i in batch])
    first = float(label_smoothed_loss(trainer.model(x["src"], x["tgt_in"]), x["tgt_out"], 0.0)[1])
    for _ in range(40):
        trainer._update([batch])
    last = float(label_smoothed_loss(trainer.model(x["src"], x["tgt_in"]), x["tgt_out"], 0.0)[1])
    assert last < first / 3


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    """Stopping after 6 updates and resuming to 13 equals 13 uninterrupted updates, bit for bit."""
    straight = make_trainer(tmp_path / "a", "train.max_steps=13")
    straight.train()
    first = make_trainer(tmp_path / "b", "train.max_steps=6")
    first.train()
    resumed = make_trainer(tmp_path / "b", "train.max_steps=13")
    resumed.resume(checkpoint.latest_checkpoint(tmp_path / "b"))
    assert resumed.progress.step == 6
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.progress.epoch == straight.progress.epoch and resumed.progress.batch_index == straight.progress.batch_index
    losses = [line for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    resumed_losses = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    strip = lambda lines: [l.split('"tokens_per_s"')[0] for l in lines]  # noqa: E731 (timings differ)
    assert strip(resumed_losses) == strip(losses)


def test_checkpoints_are_complete_and_pruned(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_steps=14", "train.keep_last=2")
    trainer.train()
    steps = sorted(p.name for p in checkpoint.checkpoint_dir(tmp_path).glob("step_*"))
    assert steps == ["step_00000012", "step_00000014"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000014"
    state = checkpoint.load_state(checkpoint.latest_checkpoint(tmp_path))
    assert state["progress"]["step"] == 14


def test_max_epochs_and_minutes_bound_the_run(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_epochs=1")
    assert "max_epochs" in trainer.train() and trainer.progress.epoch == 1
    quick = make_trainer(tmp_path / "m", "train.max_minutes=0.0001")
    assert "max_minutes" in quick.train()


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    """A trainer state carrying a pickled callable must not execute on load."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    step = tmp_path / "step"
    step.mkdir()
    (step / checkpoint.STATE).write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError, match="unreadable trainer state"):
        checkpoint.load_state(step)
    assert not (tmp_path / "pwned").exists()


def test_weights_from_another_vocabulary_are_refused(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.max_steps=1")
    best = checkpoint.save_best(tmp_path, 1, trainer.model, {})
    config = load_config(None, ["model.preset=tiny"])
    other = Transformer(config.model, 99, 99)
    with pytest.raises(CheckpointError, match="do not match"):
        checkpoint.load_checkpoint_weights(other, best)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="unreadable checkpoint|do not match"):
        checkpoint.load_weights(trainer.model, tmp_path / "broken.safetensors")
