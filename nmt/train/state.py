"""What a run saves besides its weights, and how: the progress, the optimizer, schedule and RNG states
(for an exact resume), written in the background from a copy taken at the step."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nmt import checkpoint, distributed
from nmt.model import Transformer
from nmt.train import optim

log = logging.getLogger("nmt.train")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch of `epoch` to train on
    best_bleu: float = -1.0
    bad_validations: int = 0
    train_seconds: float = 0.0  # training time over all invocations of the run
    budget_scale: float = 1.0  # lowered after an out-of-memory error; scales train.max_tokens from the next epoch
    nonfinite: int = 0  # updates in a row skipped for a non-finite loss or gradient


class RunState:
    """A run's resumable state: the model's weights and moving average, the optimizer and scheduler, the
    `progress`, and every rank's RNG streams; saved into step checkpoints and restored from them.

    Saving is collective under DDP (every rank's RNG state is gathered) and only rank 0 writes, in the
    background (`writer`), from a copy of the state taken at the call, so the next updates run
    meanwhile; `writer.wait()` waits for the write.
    """

    def __init__(self, model: Transformer, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, ema: Optional[optim.MovingAverage],
                 run_dir: Path, keep_last: int, seed: int, device: torch.device) -> None:
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.run_dir, self.keep_last, self.seed, self.device = run_dir, keep_last, seed, device
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.progress = Progress()
        self.writer = checkpoint.BackgroundWriter()

    def state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            # One entry per rank: each rank draws its own dropout masks.
            "torch_rng": distributed.gather(torch.get_rng_state()),
            "cuda_rng": distributed.gather(torch.cuda.get_rng_state() if self.device.type == "cuda" else torch.zeros(0)),
            "python_rng": json.dumps(random.getstate()),
            **({"ema": self.ema.model.state_dict()} if self.ema is not None else {}),
        }

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, progress and RNG states from a step directory."""
        checkpoint.load_checkpoint_weights(self.model, path)
        state = checkpoint.load_state(path)
        self.optimizer.load_state_dict(optim.upgrade_optimizer_state(state["optimizer"], self.model))
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        if len(state["torch_rng"]) == self.world:
            torch.set_rng_state(state["torch_rng"][self.rank])
            if self.device.type == "cuda" and state["cuda_rng"][self.rank].numel():
                torch.cuda.set_rng_state(state["cuda_rng"][self.rank])
        else:  # resumed on a different number of processes: continue, but not bit for bit
            torch.manual_seed(self.seed + 1000 * self.progress.step + self.rank)
            log.warning("checkpoint saved by %d processes, resumed on %d: dropout streams restart",
                        len(state["torch_rng"]), self.world)
        version, internal, gauss = json.loads(state["python_rng"])
        random.setstate((version, tuple(internal), gauss))
        log.info("resumed from %s (step %d, epoch %d)", path, self.progress.step, self.progress.epoch)

    def save(self) -> None:
        """A step checkpoint of the state now (see the class docstring)."""
        state = self.state()
        if self.rank != 0:
            return
        step, keep_last, run_dir = self.progress.step, self.keep_last, self.run_dir
        weights = checkpoint.host_copy(self.model.state_dict())
        state = checkpoint.host_copy(state)
        ema = state["ema"] if self.ema is not None else None

        def write() -> None:
            checkpoint.save_checkpoint(run_dir, step, checkpoint.weights_of(weights), state, keep_last)
            if ema is not None:
                checkpoint.save_ema(run_dir, step, checkpoint.weights_of(ema))
        self.writer.submit(write, after=self._copied())

    def save_best(self, bleu: float) -> None:
        """The weights now as the run's best (validation BLEU `bleu`), written in the background."""
        weights = checkpoint.weights_of(checkpoint.host_copy(self.model.state_dict()))
        self.writer.submit(functools.partial(checkpoint.save_best, self.run_dir, self.progress.step, weights,
                                             {"valid_bleu": f"{bleu:.2f}"}), after=self._copied())

    def _copied(self):
        """On CUDA, an event after the copies to the host queued so far, for the writer to wait on."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def wait_quietly(self) -> None:
        """Wait for the write in flight, logging (not raising) its error: another error is on its way up."""
        try:
            self.writer.wait()
        except Exception as exc:  # noqa: BLE001
            log.error("writing a checkpoint failed too: %s", exc)
