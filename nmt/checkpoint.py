"""Checkpoints on disk: safetensors weights plus a weights-only trainer state, written atomically.

Layout inside a run directory:
    checkpoints/step_00001000/model.safetensors, state.pt   one directory per saved step
    checkpoints/latest                                     name of the newest complete step directory
    checkpoints/best.safetensors                           weights with the best validation BLEU
A step directory is written under a temporary name and renamed when complete, and `latest`
is replaced atomically, so a crash at any moment leaves the previous checkpoint readable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from nmt.errors import CheckpointError
from nmt.model import Transformer

WEIGHTS = "model.safetensors"
STATE = "state.pt"
BEST = "best.safetensors"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_weights(model: Transformer, path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Write model weights as safetensors via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: Transformer, path: Path) -> None:
    """Load safetensors weights into `model`; shape or name mismatches become CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    except RuntimeError as exc:  # size mismatch: tokenizer or architecture differs from the weights
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: weights do not match the model built from config and tokenizer ({first})") from None
    if missing or unexpected:
        names = ", ".join(sorted(missing + unexpected)[:3])
        raise CheckpointError(f"{path}: weights do not match the configured architecture (differing tensors: {names})")


def save_checkpoint(run_dir: Path, step: int, model: Transformer, state: dict[str, Any], keep_last: int) -> Path:
    """Write step directory with weights and trainer state, point `latest` at it, prune old ones."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS), metadata={"step": str(step)})
    torch.save(state, tmp / STATE)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete step directory, or None when the run has not saved one."""
    pointer = checkpoint_dir(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoint_dir(run_dir) / pointer.read_text().strip()
    if not (path / WEIGHTS).is_file() or not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete; remove {pointer} to restart the run")
    return path


def load_state(path: Path) -> dict[str, Any]:
    """Trainer state, loaded with weights_only=True so a crafted file cannot run code."""
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise CheckpointError(f"{path / STATE}: unreadable trainer state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def inference_weights(model_dir: Path) -> Path:
    """The weights `translate` uses: the best checkpoint, else the latest, else a bare model.safetensors."""
    for candidate in (checkpoint_dir(model_dir) / BEST, model_dir / WEIGHTS):
        if candidate.is_file():
            return candidate
    latest = latest_checkpoint(model_dir)
    if latest is None:
        raise CheckpointError(f"{model_dir}: no checkpoint found (train one with `nmt train --run-dir {model_dir}`)")
    return latest / WEIGHTS
