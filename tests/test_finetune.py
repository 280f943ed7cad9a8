"""Fine-tuning from a model trained elsewhere (model.init): the start is the imported weights, a contradicting key
is refused, frozen parts stay as they were, several validation sets are scored, and a killed fine-tuning
run resumes bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from nmt import checkpoint

transformers = pytest.importorskip("transformers")

STEPS = 30


@pytest.fixture(scope="module")
def opus_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported MarianMT run: an nmt model exported to Hugging Face's layout, given a trained-looking
    final_logits_bias (so the loss's bias and padding-in-softmax paths train), imported back."""
    from test_export import make_model_dir

    from nmt.export import export_hf
    from nmt.importing.run import import_model

    root = tmp_path_factory.mktemp("opus-like")
    hf_dir = export_hf(make_model_dir(root / "ours", "model.norm_first=false", "model.activation=gelu",
                                      "model.dropout=0.1"), root / "hf")
    model = transformers.MarianMTModel.from_pretrained(hf_dir)
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
        model.final_logits_bias[0, model.config.pad_token_id] = 0.0
    model.save_pretrained(hf_dir)
    import_model(str(hf_dir), root / "imported", "xx", "yy")
    return root / "imported"


def command(run_dir: Path, corpus: Path, init: Path, *sets: str) -> list[str]:
    own = [s for s in TINY if not s.startswith(("model.preset", "tokenizer."))]  # those are the initial model's
    given = [*own, f"data.train={corpus / 'train'}", f"model.init={init}", "data.max_tokens_per_side=60",
             f"train.max_steps={STEPS}", "train.save_every=4", "train.keep_last=3", "train.log_every=5", *sets]
    return [sys.executable, "-m", "nmt_cli.main", "train", "--run-dir", str(run_dir),
            *[x for s in given for x in ("--set", s)]]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest_checkpoint(run_dir) / checkpoint.WEIGHTS))


def test_fine_tuning_starts_from_the_imported_weights_and_freezes(opus_like: Path, toy_corpus: Path,
                                                                  tmp_path: Path) -> None:
    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    start = load_file(str(checkpoint.inference_checkpoint(opus_like) / checkpoint.WEIGHTS))
    subprocess.run(command(tmp_path / "run", toy_corpus, opus_like, "train.max_steps=6",
                           "train.freeze=[embeddings, encoder]"), env=env, check=True, capture_output=True, timeout=300)
    found = weights(tmp_path / "run")
    stored = json.dumps(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert '"output_bias": true' in stored and '"pad_in_softmax": true' in stored  # the initial model's architecture
    for name, tensor in found.items():
        frozen = name.startswith(("src_embed.", "tgt_embed.", "output_bias", "encoder."))
        assert torch.equal(tensor, start[name]) == frozen, name
    assert (tmp_path / "run" / "vocab.json").read_bytes() == (opus_like / "vocab.json").read_bytes()


def test_a_key_that_contradicts_the_initial_model_is_refused(opus_like: Path, toy_corpus: Path,
                                                             tmp_path: Path) -> None:
    for wrong, named in (("model.d_model=128", "model.d_model=128"), ("tokenizer.vocab_size=500", "tokenizer.vocab_size"),
                         ("model.preset=small", "model.preset")):
        out = subprocess.run(command(tmp_path / "run", toy_corpus, opus_like, wrong), capture_output=True, text=True,
                             timeout=120, env={**os.environ, "NMT_CACHE": str(tmp_path / "cache")})
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and named in lines[0] and "model.init" in lines[0], out.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_several_validation_sets_are_scored_and_one_chooses(opus_like: Path, toy_corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    valid = f"data.valid=[{{name: toy, path: {toy_corpus / 'valid'}}}, {{name: held, path: {toy_corpus / 'test'}}}]"
    subprocess.run(command(tmp_path / "run", toy_corpus, opus_like, valid, "train.best_on=held", "train.max_steps=8",
                           "train.valid_every=4", "train.valid_bleu_sentences=8"),
                   env=env, check=True, capture_output=True, timeout=300)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "valid_sets" in r]
    assert [r["step"] for r in scored] == [4, 8]
    for record in scored:
        assert set(record["valid_sets"]) == {"toy", "held"}
        assert record["valid_bleu"] == record["valid_sets"]["held"]["bleu"]  # best_on's set decides
        assert record["valid_loss"] == record["valid_sets"]["held"]["loss"]
    pytest.importorskip("matplotlib")
    from nmt.visualize import plot_curves

    assert plot_curves(tmp_path / "run", tmp_path / "curves.png").stat().st_size > 0


def test_killed_fine_tuning_resumes_bit_for_bit(opus_like: Path, toy_corpus: Path, tmp_path: Path) -> None:
    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    subprocess.run(command(tmp_path / "straight", toy_corpus, opus_like), env=env, check=True, capture_output=True,
                   timeout=300)
    killed, rng, kills = tmp_path / "killed", random.Random(3), 0
    for _ in range(2):
        process = subprocess.Popen(command(killed, toy_corpus, opus_like), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        start = time.monotonic()
        while not (checkpoint.checkpoint_dir(killed) / "latest").exists() and time.monotonic() - start < 120:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    assert kills >= 1
    subprocess.run(command(killed, toy_corpus, opus_like), env=env, check=True, capture_output=True, timeout=300)
    expected, found = weights(tmp_path / "straight"), weights(killed)
    assert checkpoint.latest_checkpoint(killed).name == f"step_{STEPS:08d}"
    assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)


def test_model_init_takes_a_hugging_face_directory(tmp_path: Path, toy_corpus: Path) -> None:
    """model.init straight from a Hugging Face directory: converted in memory, its tokenizer written into the run."""
    from test_export import make_model_dir

    from nmt.export import export_hf

    hf_dir = export_hf(make_model_dir(tmp_path / "ours", "model.norm_first=false"), tmp_path / "hf")
    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    subprocess.run(command(tmp_path / "run", toy_corpus, hf_dir, "train.max_steps=4"), env=env, check=True,
                   capture_output=True, timeout=300)
    assert (tmp_path / "run" / "vocab.json").is_file() and checkpoint.latest_checkpoint(tmp_path / "run") is not None
