"""Faults: SIGKILL during training, a full disk while saving, Ctrl-C while translating, corrupted files."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from nmt import Translator, checkpoint
from nmt.errors import CheckpointError
from test_train import make_trainer

STEPS = 60


def train_command(run_dir: Path, corpus: Path, save_every: int = 4, extra: Sequence[str] = ()) -> list[str]:
    sets = [*TINY, f"data.train={corpus / 'train'}", f"train.max_steps={STEPS}", f"train.save_every={save_every}",
            "train.keep_last=3", "train.log_every=5", *extra]
    return [sys.executable, "-m", "nmt_cli.main", "train", "--run-dir", str(run_dir),
            *[x for s in sets for x in ("--set", s)]]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = checkpoint.latest_checkpoint(run_dir)
    assert latest is not None and latest.name == f"step_{STEPS:08d}"
    return load_file(str(latest / checkpoint.WEIGHTS))


def assert_all_checkpoints_readable(run_dir: Path) -> None:
    root = checkpoint.checkpoint_dir(run_dir)
    for directory in root.glob("step_*"):
        if not directory.name.endswith(".tmp"):
            checkpoint.verify(directory)
            checkpoint.load_state(directory)
    if (root / "latest").exists():
        checkpoint.verify(checkpoint.latest_checkpoint(run_dir))


@pytest.fixture(scope="module")
def uninterrupted(toy_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of the training run below, never interrupted."""
    run_dir = tmp_path_factory.mktemp("straight")
    env = {**os.environ, "NMT_CACHE": str(run_dir / "cache")}
    subprocess.run(train_command(run_dir, toy_corpus), env=env, check=True, capture_output=True, timeout=300)
    return final_weights(run_dir)


def assert_same_weights(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == found.keys()
    for name in expected:
        assert torch.equal(expected[name], found[name]), name


def test_sigkill_and_resume_gives_the_uninterrupted_result(toy_corpus: Path, tmp_path: Path,
                                                           uninterrupted: dict[str, torch.Tensor]) -> None:
    kill_and_resume(toy_corpus, tmp_path, uninterrupted)


def kill_and_resume(corpus: Path, tmp_path: Path, uninterrupted: dict[str, torch.Tensor], extra: Sequence[str] = ()) -> None:
    """Kill a training run three times at random moments after a checkpoint, resume it to the end, and
    compare its weights with those of the run never interrupted."""
    def train_command_of(run_dir: Path) -> list[str]:
        return train_command(run_dir, corpus, extra=extra)

    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    killed = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(train_command_of(killed), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        start = time.monotonic()
        while not (checkpoint.checkpoint_dir(killed) / "latest").exists() and time.monotonic() - start < 120:
            time.sleep(0.05)  # the first kill lands after a checkpoint exists, at a random moment after it
        time.sleep(rng.uniform(0.0, 1.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert_all_checkpoints_readable(killed)
    assert kills >= 2
    subprocess.run(train_command_of(killed), env=env, check=True, capture_output=True, timeout=300)
    assert_same_weights(uninterrupted, final_weights(killed))


def test_ctrl_c_while_training_saves_that_step_and_resumes_exactly(toy_corpus: Path, tmp_path: Path,
                                                                   uninterrupted: dict[str, torch.Tensor]) -> None:
    env = {**os.environ, "NMT_CACHE": str(tmp_path / "cache")}
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    command = train_command(run_dir, toy_corpus, save_every=1000)  # no checkpoint but the one Ctrl-C makes
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        start = time.monotonic()
        while not (run_dir / "metrics.jsonl").exists() and time.monotonic() - start < 120:
            time.sleep(0.01)  # interrupt once training is under way (metrics are written from step 5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    messages = log.read_text()
    assert process.returncode == 130 and "Traceback" not in messages, messages
    saved = checkpoint.latest_checkpoint(run_dir)
    assert saved is not None and 5 <= int(saved.name.removeprefix("step_")) < STEPS
    assert f"interrupted at step {int(saved.name.removeprefix('step_'))}, saved there" in messages
    assert_all_checkpoints_readable(run_dir)
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    assert_same_weights(uninterrupted, final_weights(run_dir))


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path, "train.max_steps=9", "train.save_every=3")
    real_save = torch.save
    calls = []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            real_save(obj, path, *args, **kwargs)
            Path(path).write_bytes(Path(path).read_bytes()[:100])  # half-written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    message = str(info.value)
    assert "No space left on device" in message and "previous checkpoint step_00000003 is intact" in message
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000003"
    checkpoint.verify(latest)
    assert checkpoint.load_state(latest)["progress"]["step"] == 3
    assert not list(checkpoint.checkpoint_dir(tmp_path).glob("*.tmp"))


def test_corrupted_checkpoint_is_reported_by_checksum(untrained_model: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(untrained_model, model_dir)
    weights = checkpoint.inference_checkpoint(model_dir) / checkpoint.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped bit pattern inside a tensor: safetensors alone would not notice
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch, the file is truncated or corrupted"):
        Translator.load(model_dir, device="cpu")
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        Translator.load(model_dir, device="cpu")


def test_weights_with_other_tensors_are_named_in_one_error(tmp_path: Path) -> None:
    """Tensors both missing and unexpected (another architecture's weights) give a CheckpointError
    naming them, not a TypeError from the report itself."""
    from safetensors.torch import save_file

    from nmt.config import ModelConfig
    from nmt.model import Transformer

    small = ModelConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)
    deeper = ModelConfig(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=1, d_ff=32, share_embeddings=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in Transformer(deeper, 20, 20).state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"differing tensors: encoder\.1\."):
        checkpoint.load_weights(Transformer(small, 20, 20), path)


def test_ctrl_c_leaves_no_partial_output(untrained_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "big.txt"
    source.write_text("ka lu mi no pe ri su to\n" * 30000)
    output, log = tmp_path / "out.txt", tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "nmt_cli.main", "translate", "--model", str(untrained_model),
                                    "--input", str(source), "--output", str(output), "--device", "cpu"],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        start = time.monotonic()
        while "translate:" not in log.read_text() and time.monotonic() - start < 120:
            time.sleep(0.1)  # interrupt once translation is under way
        process.send_signal(signal.SIGINT)
        process.wait(timeout=180)  # generous: on a loaded machine the interpreter may still be importing torch
    messages = log.read_text()
    if process.returncode == 0:  # it finished first: then the file must be complete
        assert len(output.read_text().splitlines()) == 30000
    else:
        assert process.returncode == 130 and "interrupted" in messages and "Traceback" not in messages
        assert not output.exists() and "the same command continues from there" in messages
    # Besides the output, only the partial translation that the same command would continue.
    left = {p.name for p in tmp_path.iterdir() if p != output} - {"big.txt", "stderr.txt"}
    assert left <= {".out.txt.partial", ".out.txt.partial.json"}


def test_an_interrupted_translation_continues_where_it_stopped(untrained_model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Into a file, long input goes in chunks; after a stop the same call translates only what is left
    and writes the same file as an uninterrupted run; other settings start over."""
    from nmt import files

    monkeypatch.setattr(files, "RESUME_CHUNK", 4)
    source = tmp_path / "in.txt"
    source.write_text("".join(f"ka lu {'mi ' * (i % 4)}no\n" if i != 5 else "\n" for i in range(10)))
    whole = tmp_path / "whole.txt"
    files.translate_file(untrained_model, source, whole, beam=2, device="cpu")
    real, sizes = files.Translator.translate, []

    def counted(self, lines, *args, **kwargs):
        sizes.append(len(lines))
        if stop_at == len(sizes):
            raise KeyboardInterrupt
        return real(self, lines, *args, **kwargs)

    monkeypatch.setattr(files.Translator, "translate", counted)
    output, stop_at = tmp_path / "out.txt", 3
    with pytest.raises(KeyboardInterrupt):
        files.translate_file(untrained_model, source, output, beam=2, device="cpu")
    assert not output.exists() and len((tmp_path / ".out.txt.partial").read_text().splitlines()) == 8
    sizes.clear()
    stop_at = 0
    files.translate_file(untrained_model, source, output, beam=2, device="cpu")
    assert sizes == [2] and output.read_text() == whole.read_text()  # only the last chunk was left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt", "whole.txt"]
    # A partial translation made with other settings is not continued.
    sizes.clear()
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        files.translate_file(untrained_model, source, output, beam=2, device="cpu")
    sizes.clear()
    stop_at = 0
    files.translate_file(untrained_model, source, output, beam=1, device="cpu")
    assert sizes == [4, 3, 2]  # sentences sent to the model: the empty line 5 is answered without it
    # To stdout the chunks are written as they are done, with the same text and line numbers.
    stop_at, printed, nbest = 0, io.StringIO(), io.StringIO()
    files.translate_file(untrained_model, source, None, beam=2, device="cpu", stdout=printed)
    assert printed.getvalue() == whole.read_text()
    files.translate_file(untrained_model, source, None, beam=2, nbest=2, device="cpu", stdout=nbest)
    numbers = [int(line.split(" ||| ")[0]) for line in nbest.getvalue().splitlines()]
    assert numbers == [i for i in range(10) for _ in range(1 if i == 5 else 2)]  # the empty line 5 has one


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old checkpoint is renamed out of sight before its files go, so a kill in the middle of deleting
    it leaves every visible checkpoint whole; the next save clears what the kill left."""
    import shutil

    trainer = make_trainer(tmp_path, "train.max_steps=1")
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        path = Path(path)
        if path.name.endswith(".deleted") and (path / checkpoint.WEIGHTS).exists():
            (path / checkpoint.WEIGHTS).unlink()  # one file gone, then the process dies
            raise SystemExit("killed")
        return real_rmtree(path, *args, **kwargs)

    checkpoint.save_checkpoint(tmp_path, 1, trainer.model, {}, keep_last=1)
    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        checkpoint.save_checkpoint(tmp_path, 2, trainer.model, {}, keep_last=1)
    assert [d.name for d in checkpoint.step_checkpoints(tmp_path)] == ["step_00000002"]
    assert_all_checkpoints_readable(tmp_path)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    checkpoint.save_checkpoint(tmp_path, 3, trainer.model, {}, keep_last=1)
    assert sorted(p.name for p in checkpoint.checkpoint_dir(tmp_path).iterdir()) == ["latest", "step_00000003"]
