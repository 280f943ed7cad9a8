"""Checkpoints on disk: safetensors weights plus a weights-only trainer state, written atomically, checksummed.

Layout inside a run directory:
    checkpoints/step_00001000/   model.safetensors, state.pt, sha256sums   one directory per saved step
    checkpoints/best_00000800/   model.safetensors, sha256sums             weights with the best validation BLEU
    checkpoints/average_last5/   model.safetensors, sha256sums             written by `nmt average`
    checkpoints/ema_00001000/    model.safetensors, sha256sums             moving average (train.ema_decay)
    checkpoints/latest, best, average, ema   pointer files naming the current directories
Each directory is written under a temporary name and renamed when complete, and a pointer is
replaced atomically after it; a directory to delete is first renamed out of sight (`nmt.atomic`). So a crash or a
full disk at any moment leaves the previous checkpoint readable and no directory half there.
Training writes from a copy of its state (`host_copy`) in a background thread (`BackgroundWriter`),
so it goes on while a checkpoint is serialised, hashed and written. `sha256sums` lets a truncated
or corrupted file be reported as such instead of failing somewhere deep inside torch.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from nmt import atomic
from nmt.errors import CheckpointError, ConfigError
from nmt.model import Transformer, fused_names

Weights = Union[Transformer, dict[str, torch.Tensor]]  # a model, or its tensors as `weights_of` gives them

WEIGHTS = "model.safetensors"
STATE = "state.pt"
CHECKSUMS = "sha256sums"


def host_copy(tree: Any, memo: Optional[dict] = None) -> Any:
    """A copy of `tree` (nested dicts, lists and tuples) whose tensors are copied to the CPU, for writing
    while training changes the originals. Tensors that share memory (tied embeddings) stay shared.

    From a GPU the copies are queued without waiting (into pinned memory); the caller makes the
    writer wait for them (`BackgroundWriter.submit(..., after=event)`)."""
    memo = {} if memo is None else memo
    if isinstance(tree, torch.Tensor):
        key = (tree.untyped_storage().data_ptr(), tree.storage_offset(), tuple(tree.shape), tuple(tree.stride()), tree.dtype)
        if key not in memo:
            memo[key] = tree.detach().to("cpu", copy=True, non_blocking=tree.is_cuda)
        return memo[key]
    if isinstance(tree, dict):
        return {k: host_copy(v, memo) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(host_copy(v, memo) for v in tree)
    return tree


def weights_of(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores a model: one name per tensor (the first in sorted order, as
    `safetensors.torch.save_model` keeps), so tied embeddings are written once."""
    kept: dict[tuple, str] = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        kept.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), name)
    return {name: state_dict[name].contiguous() for name in sorted(kept.values())}


class BackgroundWriter:
    """Runs checkpoint writes one at a time in a thread of their own, so training goes on meanwhile.

    `submit` waits for the write before it; an error of a write (a full disk) is raised by the next
    `submit` or `wait`, in the training thread. The thread is not a daemon, so the process also
    waits for a write in flight before it exits; a crash or kill during one leaves only a
    temporary directory, which the next write removes.
    """

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, job: Callable[[], Any], after: Optional[Any] = None) -> None:
        """Run `job()` in the background once the previous write is done (and `after`, a CUDA event, has passed)."""
        self.wait()

        def run() -> None:
            try:
                if after is not None:
                    after.synchronize()  # the copies to the host queued before it have landed
                job()
            except BaseException as exc:  # handed to the training thread
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of the last one, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_dir(root: Path, name: str, model: Weights, state: Optional[dict[str, Any]],
               metadata: dict[str, str]) -> Path:
    """Write weights (a model or a state dict) and state plus checksums into root/name via a temporary directory."""
    final = root / name

    def write(tmp: Path) -> None:
        tmp.mkdir()
        if isinstance(model, dict):
            save_file(model, str(tmp / WEIGHTS), metadata=metadata)
        else:
            save_model(model, str(tmp / WEIGHTS), metadata=metadata)
        files = [WEIGHTS]
        if state is not None:
            torch.save(state, tmp / STATE)
            files.append(STATE)
        (tmp / CHECKSUMS).write_text("".join(f"{_sha256(tmp / f)}  {f}\n" for f in files))
    try:
        root.mkdir(parents=True, exist_ok=True)
        # One writer per run directory, so the temporary has a fixed name: the next write removes a killed one's.
        atomic.atomic_write(final, write, per_process=False)
    except (OSError, SafetensorError, RuntimeError) as exc:
        previous = _pointed(root, "latest")
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {final} ({exc}); {kept}. "
                              "Free disk space and run the same command again to resume") from None
    return final


def _point(root: Path, pointer: str, target: Path) -> None:
    try:
        atomic.atomic_write(root / pointer, lambda tmp: tmp.write_text(target.name), per_process=False)
    except OSError as exc:
        raise CheckpointError(f"could not update {root / pointer} ({exc}); free disk space and run again") from None


def _pointed(root: Path, pointer: str) -> Optional[Path]:
    path = root / pointer
    if not path.is_file():
        return None
    target = root / path.read_text().strip()
    if not (target / CHECKSUMS).is_file():
        raise CheckpointError(f"{path} names {target}, which is missing or incomplete; "
                              f"remove {path} to start that part afresh")
    return target


def save_checkpoint(run_dir: Path, step: int, model: Weights, state: dict[str, Any], keep_last: int) -> Path:
    """Write a step directory with weights and trainer state, point `latest` at it, prune old ones."""
    root = checkpoint_dir(run_dir)
    final = _write_dir(root, f"step_{step:08d}", model, state, {"step": str(step)})
    _point(root, "latest", final)
    for old in step_checkpoints(run_dir)[:-keep_last]:
        atomic.remove(old)
    for stale in root.glob(".*.deleted"):  # deletions a crash interrupted
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _replace(run_dir: Path, kind: str, step: int, model: Weights, metadata: dict[str, str]) -> Path:
    """Write weights as checkpoints/KIND_STEP, point `kind` at it and drop the earlier KIND_* directory."""
    root = checkpoint_dir(run_dir)
    final = _write_dir(root, f"{kind}_{step:08d}", model, None, {"step": str(step), **metadata})
    _point(root, kind, final)
    for old in root.glob(f"{kind}_*"):
        if old.is_dir() and old != final:
            atomic.remove(old)
    return final


def save_best(run_dir: Path, step: int, model: Weights, metadata: dict[str, str]) -> Path:
    """Write the weights as the new best checkpoint and drop the previous best."""
    return _replace(run_dir, "best", step, model, metadata)


def save_ema(run_dir: Path, step: int, ema: Weights) -> Path:
    """Write the moving average of the weights as checkpoints/ema_STEP, pointed at by `ema`."""
    return _replace(run_dir, "ema", step, ema, {"ema": "true"})


def ema_checkpoint(run_dir: Path) -> Optional[Path]:
    """The moving average of the weights (train.ema_decay), or None when the run keeps none."""
    return _pointed(checkpoint_dir(run_dir), "ema")


def use_ema(run_dir: Path) -> Path:
    """Make translate and eval use the moving average of the weights (in place of an average)."""
    found = ema_checkpoint(run_dir)
    if found is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir)} holds no moving average of the weights "
                              "(train with train.ema_decay > 0)")
    _point(checkpoint_dir(run_dir), "average", found)
    return found


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The complete step checkpoint directories of a run, oldest first."""
    return sorted(p for p in checkpoint_dir(run_dir).glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def average_checkpoints(run_dir: Path, last: int) -> Path:
    """Average the weights of the last `last` step checkpoints into checkpoints/average_lastN.

    Translate and eval then use the average (until training runs again in this run dir).
    """
    root = checkpoint_dir(run_dir)
    steps = step_checkpoints(run_dir)
    if last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    if len(steps) < last:
        raise CheckpointError(f"{root} holds {len(steps)} step checkpoints, cannot average the last {last} "
                              "(train with a larger train.keep_last)")
    chosen = steps[-last:]
    total: dict[str, torch.Tensor] = {}
    for directory in chosen:
        verify(directory)
        # One layout for all: checkpoints of a run resumed across the fusion of the projections differ.
        for name, tensor in fused_names(load_file(str(directory / WEIGHTS))).items():
            total[name] = total.get(name, 0) + tensor.double()
    reference = fused_names(load_file(str(chosen[-1] / WEIGHTS)))
    averaged = {name: (t / last).to(reference[name].dtype) for name, t in total.items()}
    final = _write_dir(root, f"average_last{last}", averaged, None,
                       {"averaged": ",".join(d.name for d in chosen)})
    _point(root, "average", final)
    return final


def forget_average(run_dir: Path) -> None:
    """Training changes the run, so an earlier average no longer stands for it."""
    (checkpoint_dir(run_dir) / "average").unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete step directory, or None when the run has not saved one."""
    return _pointed(checkpoint_dir(run_dir), "latest")


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    return _pointed(checkpoint_dir(run_dir), "best")


def verify(directory: Path) -> None:
    """Compare every file of a checkpoint directory with its stored SHA-256."""
    sums = directory / CHECKSUMS
    if not sums.is_file():
        raise CheckpointError(f"{directory}: no {CHECKSUMS}; the checkpoint is incomplete")
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch, the file is truncated or corrupted; "
                                  "restore it or use another checkpoint")


def load_weights(model: Transformer, path: Path, assign: bool = False) -> None:
    """Load safetensors weights into `model`; shape or name mismatches become CheckpointError.

    With `assign` the loaded tensors become the model's parameters instead of being copied into
    them, so a model built without memory (on the meta device) costs one copy of the weights."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        missing, unexpected = _assign_weights(model, path) if assign else load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
    except RuntimeError as exc:  # size mismatch: tokenizer or architecture differs from the weights
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: weights do not match the model built from config and tokenizer ({first})") from None
    if missing or unexpected:
        names = ", ".join(sorted({*missing, *unexpected})[:3])  # safetensors gives a set and a list
        raise CheckpointError(f"{path}: weights do not match the configured architecture (differing tensors: {names})")


def with_tied_names(model: Transformer, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every name of a tied parameter (stored under one of them, as `weights_of` keeps it)."""
    names_of: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    state = dict(state)
    for names in names_of.values():
        stored = next((name for name in names if name in state), None)
        for name in names if stored is not None else ():
            state.setdefault(name, state[stored])
    return state


def _assign_weights(model: Transformer, path: Path) -> tuple[list[str], list[str]]:
    missing, unexpected = model.load_state_dict(with_tied_names(model, load_file(str(path))), strict=False, assign=True)
    model.reset_buffers()
    return missing, unexpected


def load_checkpoint_weights(model: Transformer, directory: Path, assign: bool = False) -> None:
    """Verify a checkpoint directory's checksums, then load its weights (see `load_weights` for `assign`)."""
    verify(directory)
    load_weights(model, directory / WEIGHTS, assign)


def load_state(path: Path) -> dict[str, Any]:
    """Trainer state of a step directory, loaded with weights_only=True so a crafted file cannot run code."""
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        raise CheckpointError(f"{path / STATE}: unreadable trainer state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def inference_checkpoint(model_dir: Path) -> Path:
    """The checkpoint `translate` uses: an average made by `nmt average`, else the best one, else the latest."""
    root = checkpoint_dir(model_dir)
    found = _pointed(root, "average") or best_checkpoint(model_dir) or latest_checkpoint(model_dir)
    if found is None:
        raise CheckpointError(f"{model_dir}: no checkpoint found (train one with `nmt train --run-dir {model_dir}`)")
    return found
