"""Training: the loop with its schedule, DDP, compiling, validation, logging and checkpoints (the loss is
nmt/loss.py, the optimizer side of an update nmt/optim.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from nmt import checkpoint, distributed, optim
from nmt import model as nmt_model
from nmt.config import TrainConfig
from nmt.data import EpochBatches, TrainingData, collate, make_batches
from nmt.errors import TrainingError
from nmt.loss import label_smoothed_loss
from nmt.model import Transformer, bf16_is_native
from nmt.tokenizer import PAD_ID

log = logging.getLogger(__name__)


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """What train.precision (auto, fp32 or bf16) means on `device`: bf16 autocast, or fp32. auto is bf16
    where the device multiplies bf16 in hardware (CUDA, a CPU with AMX: `bf16_is_native`)."""
    return precision == "bf16" or (precision == "auto" and bf16_is_native(device))


def inverse_sqrt(warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup to 1 over `warmup_steps`, then decay with 1/sqrt(step)."""
    def factor(step: int) -> float:
        step += 1
        if warmup_steps == 0:
            return 1.0 / math.sqrt(step)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))
    return factor


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether the model runs under torch.compile: `train.compile`, where `auto` means on CUDA only.

    On CUDA the compiled step fuses the element-wise work between the matrix multiplies into a few
    kernels, where eager mode launches one per operator; on a CPU inductor's kernels measured no
    faster than eager's (bench/README.md), and compiling costs a minute or more up front.
    """
    return device.type == "cuda" if config.compile == "auto" else bool(config.compile)


def compile_model(net: torch.nn.Module, backend: str | Callable = "inductor",
                  fallback: bool = False) -> Callable[..., torch.Tensor]:
    """`net` under torch.compile with dynamic shapes: one graph (encoder and decoder) for batches of any size.

    Sizes that happen to be equal in a batch (its source and target lengths, say) are not taken to
    be equal always (dynamo's "duck sizing"), which would compile again at the next batch where they
    differ, and again at each new coincidence. A batch of one sentence compiles once more (dynamo
    specialises sizes of 1). With `fallback` (`train.compile: auto`), a compiler that fails (no
    working triton, a GPU too old for it) leaves a warning and the eager model, not a crash.
    """
    from torch.fx.experimental import _config as shape_config

    compiled = torch.compile(net, dynamic=True, backend=backend)
    eager = False

    def run(*args, **kwargs) -> torch.Tensor:
        nonlocal eager
        if not eager:
            try:
                with shape_config.patch(use_duck_shape=False):
                    return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (the eager call below raises any error of the model itself)
                if not fallback or isinstance(exc, torch.OutOfMemoryError):
                    raise
                eager = True
                log.warning("torch.compile failed, training without it (train.compile: false skips the attempt): %s",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return net(*args, **kwargs)
    return run


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


INTERRUPTED = "interrupted (Ctrl-C)"


class _CtrlC:
    """While training in one process: the first Ctrl-C asks the loop to stop after the current update
    and save a checkpoint there; the handler then steps aside, so a second Ctrl-C stops at once
    (checkpoints are written atomically, so the last complete one is kept either way).

    Several processes (torchrun) keep the plain KeyboardInterrupt: they would have to agree on the
    step to stop at, which costs a collective per update.
    """

    def __init__(self, enabled: bool) -> None:
        self.pressed = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous = None

    def __enter__(self) -> "_CtrlC":
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, number, frame) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, self.previous)
        log.warning("Ctrl-C: stopping after this update and saving a checkpoint (Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        if self.enabled and not self.pressed:
            signal.signal(signal.SIGINT, self.previous)


class Update(NamedTuple):
    """One update, as the device left it: read by `Trainer._settle`, every few updates, not after each."""

    step: int
    figures: torch.Tensor  # float64 (5,): summed loss, summed NLL, applied (1) or skipped (0), target tokens, all tokens


class _Groups(Dataset):
    """Collates groups of batches (lists of corpus indices) into model inputs, ahead of the step.

    With loader workers this runs in other processes and the DataLoader pins the tensors, so the
    training loop finds its inputs ready for non-blocking copies to the GPU.
    """

    def __init__(self, corpus: TrainingData, start_id: int) -> None:
        self.corpus, self.start_id = corpus, start_id

    def __getitem__(self, item: tuple[list[np.ndarray], tuple[int, int]]) -> dict:
        group, position = item
        return {"group": group, "position": position, **collate_group(self.corpus, group, self.start_id)}


def collate_group(corpus: TrainingData, group: list[np.ndarray], start_id: int) -> dict:
    """Inputs of each batch (rows of `corpus`) of `group`, and its target and total non-padding token counts
    (float64 (2,))."""
    inputs = [corpus.collate(rows, start_id) for rows in group]
    n_target = sum(x["targets"].numel() for x in inputs)
    n_tokens = n_target + sum(int((x["src"] != PAD_ID).sum()) for x in inputs)
    return {"inputs": inputs, "counts": torch.tensor([n_target, n_tokens], dtype=torch.float64)}


@dataclass
class ValidSet:
    src: list[list[int]]
    tgt: list[list[int]]


class Trainer:
    """Runs updates until a bound is hit; validates, logs to metrics.jsonl and checkpoints on the way."""

    def __init__(self, model: Transformer, config: TrainConfig, run_dir: Path, corpus: TrainingData,
                 valid: Optional[ValidSet] = None, bleu: Optional[Callable[[Transformer], float]] = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.config, self.run_dir = model.to(device), config, run_dir
        self.corpus, self.valid, self.bleu, self.device = corpus, valid, bleu, device
        self.world, self.rank = distributed.world_size(), distributed.rank()
        # Under bf16 the forward and backward run through a twin with bf16 linear weights, cast once per update.
        # On a CPU their row counts are rounded up to multiples of 256 (see `nmt.model.RowBucketedLinear`).
        self.bf16 = trains_in_bf16(config.precision, device)  # resolved once: auto's choice depends on the hardware
        row_bucket = 256 if self.device.type == "cpu" and nmt_model.CPU_BF16_WORKAROUNDS else 0
        self.low_precision = optim.LowPrecisionCopy(model, torch.bfloat16, row_bucket) if self.bf16 else None
        computed = self.low_precision.module if self.low_precision else model
        if distributed.is_main():
            log.info("training in %s (train.precision=%s on %s)", "bf16" if self.bf16 else "fp32", config.precision,
                     "a CPU with AMX" if self.bf16 and device.type == "cpu" and config.precision == "auto" else device.type)
        # Under torchrun that runs wrapped in DDP, which averages gradients over ranks. The position
        # tables are constants, so DDP need not broadcast buffers before each forward, and the
        # gradients live in its all-reduce buckets instead of beside them.
        self.ddp = None if self.world == 1 else DistributedDataParallel(
            computed, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
            gradient_as_bucket_view=True)
        self.net = self.ddp or computed
        self.uncompiled = compiles(config, device)  # compiled at the first update, see `_compile_on_fixed_shapes`
        if self.uncompiled:
            self.net = compile_model(self.net, fallback=config.compile == "auto")
        self.parameters = list(model.parameters())
        self.optimizer = optim.adamw(self.parameters, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, inverse_sqrt(config.warmup_steps))
        self.progress = Progress()
        self.ema = optim.MovingAverage(model, config.ema_decay) if config.ema_decay else None
        self.writer = checkpoint.BackgroundWriter()
        self.metrics = run_dir / "metrics.jsonl"

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        p = self.progress
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "progress": dataclasses.asdict(p),
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
            torch.manual_seed(self.config.seed + 1000 * self.progress.step + self.rank)
            log.warning("checkpoint saved by %d processes, resumed on %d: dropout streams restart",
                        len(state["torch_rng"]), self.world)
        version, internal, gauss = json.loads(state["python_rng"])
        random.setstate((version, tuple(internal), gauss))
        log.info("resumed from %s (step %d, epoch %d)", path, self.progress.step, self.progress.epoch)

    def save(self) -> None:
        """Collective under DDP (every rank's RNG state is gathered); only rank 0 writes.

        The write happens in the background from a copy of the state taken now (`checkpoint.host_copy`),
        so the next updates run meanwhile; `self.writer.wait()` waits for it.
        """
        state = self.state()
        if self.rank != 0:
            return
        step, config, run_dir = self.progress.step, self.config, self.run_dir
        weights = checkpoint.host_copy(self.model.state_dict())
        state = checkpoint.host_copy(state)
        ema = state["ema"] if self.ema is not None else None

        def write() -> None:
            checkpoint.save_checkpoint(run_dir, step, checkpoint.weights_of(weights), state, config.keep_last)
            if ema is not None:
                checkpoint.save_ema(run_dir, step, checkpoint.weights_of(ema))
        self.writer.submit(write, after=self._copied())

    def _copied(self):
        """On CUDA, an event after the copies to the host queued so far, for the writer to wait on."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> EpochBatches:
        budget = int(self.config.max_tokens * self.progress.budget_scale)
        return self.corpus.epoch(budget, self.config.seed, epoch)

    def _groups(self) -> Iterator[tuple[list[np.ndarray], tuple[int, int]]]:
        """From the current position on: this rank's share of each next `accum_steps * world` batches,
        with the position (epoch, batch index) after them. Epochs run into each other."""
        epoch, index = self.progress.epoch, self.progress.batch_index
        batches = self._epoch_batches(epoch)
        share = self.config.accum_steps
        while True:
            group = []
            while len(group) < share * self.world:
                if index >= len(batches):
                    epoch, index = epoch + 1, 0
                    batches = self._epoch_batches(epoch)
                group.append(batches[index])
                index += 1
            # After an epoch's last batch the position is the next epoch's start, so max_epochs stops there.
            yield group[self.rank * share:(self.rank + 1) * share], (epoch + 1, 0) if index >= len(batches) else (epoch, index)

    def _stream(self) -> Iterator[dict]:
        """Collated groups from the current position, prepared ahead by `train.loader_workers` processes."""
        workers = self.config.loader_workers
        if workers < 0:
            workers = 2 if self.device.type == "cuda" else 0  # on CPU the cores are busy with the step itself
        loader = DataLoader(_Groups(self.corpus, self.model.start_id), sampler=self._groups(), batch_size=None,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            prefetch_factor=4 if workers else None,
                            generator=torch.Generator())  # its own seed draw leaves the dropout stream alone
        return iter(loader)

    def _update(self, group: list[np.ndarray], collated: Optional[dict] = None) -> Optional[Update]:
        """One optimizer update over the batches of `group` (`collated`: their inputs, if made already).

        Nothing here waits for the device: a non-finite loss or gradient makes the fused optimizer
        skip the update on the device, and the returned figures say so when they are read. Returns
        None when the update was skipped because even single sentences ran out of memory.

        The gradients are summed over target tokens (and ranks); their division by the number of
        target tokens of all ranks happens in the optimizer step (`optim.step`). So that number, with
        the losses, takes one all-reduce after the backward instead of one before the forward.
        """
        self.model.train()
        if self.low_precision is not None:
            self.low_precision.module.train()
            self.low_precision.refresh()
        if self.uncompiled:
            self._compile_on_fixed_shapes()
        collated = collated or collate_group(self.corpus, group, self.model.start_id)
        try:
            losses = self._accumulate(collated["inputs"])
        except torch.OutOfMemoryError:
            if self.world > 1:  # ranks cannot retry on their own without deadlocking the others
                raise TrainingError(f"out of memory at step {self.progress.step} on rank {self.rank}; "
                                    "lower train.max_tokens and raise train.accum_steps") from None
            return self._after_out_of_memory(group)
        counts = collated["counts"].to(self.device, non_blocking=True, copy=True)
        totals = distributed.sum_(torch.cat([losses.double(), counts]))  # loss, NLL, target tokens, all tokens
        applied = optim.step(self.optimizer, self.parameters, totals[2], self.config.clip_norm,
                             torch.isfinite(totals[:2]).all())
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(applied)
        self.optimizer.zero_grad(set_to_none=True)
        figures = torch.cat([totals[:2], applied.double().view(1), totals[2:]])  # all float64, on the device
        return Update(self.progress.step + 1, figures)

    def _accumulate(self, inputs: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward over each batch; the gradients sum to those of the summed loss over all ranks.

        DDP averages gradients over ranks, so each rank scales its loss by the world size. Returns the
        summed loss and NLL of this rank's batches (2,), on the device.

        The forward runs under autocast, the backward outside it, as torch recommends: on a GPU the
        backward runs on autograd's own thread, which autocast never reaches, but on a CPU it runs on
        this one, where autocast would recast the backward's matrix multiplies of operations the
        forward kept in fp32 (the attention's, see `Attention._sdpa`) to bf16.
        """
        totals = None
        for index, x in enumerate(inputs):
            x = {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
            last = index == len(inputs) - 1
            with nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with self._autocast():
                    loss, nll = self._batch_loss(self.net, x, self.config.label_smoothing)
                (loss * self.world if self.world > 1 else loss).backward()
            if self.low_precision is not None and (last or self.ddp is None):
                # Under DDP the bf16 gradients of no_sync batches sum in DDP's buckets until the last one.
                self.low_precision.hand_off(first=index == 0 or self.ddp is not None)
            batch = torch.stack([loss.detach(), nll])
            totals = batch if totals is None else totals + batch
        return totals

    def _compile_on_fixed_shapes(self) -> None:
        """Compile the step (forward and backward) on a made-up batch of fixed shape, leaving no trace.

        Inductor picks its kernels by the sizes of the batch it compiles on, so a run compiled on its
        first batch and one resumed at a later batch would compute with different kernels and drift
        apart in the last bits. Compiled on the same made-up batch, they use the same ones and resume
        exactly. The RNG states are put back and the gradients dropped.
        """
        self.uncompiled = False
        B, S, T = 16, 21, 22
        tokens = torch.Generator().manual_seed(0)
        x = {"src": torch.randint(4, self.model.src_embed.tokens.num_embeddings, (B, S), generator=tokens),
             "tgt_in": torch.randint(4, self.model.tgt_embed.tokens.num_embeddings, (B, T), generator=tokens),
             "targets": torch.arange(B * T)}
        x["tgt_out"] = x["tgt_in"]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with self._autocast():
                loss, _ = self._batch_loss(self.net, {k: v.to(self.device) for k, v in x.items()}, 0.0)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        if self.low_precision is not None:
            self.low_precision.clear()

    def _batch_loss(self, net: torch.nn.Module, x: dict[str, torch.Tensor], smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and NLL of one collated batch (on the device) through `net`, the model or its wrapper."""
        hidden = net(x["src"], x["tgt_in"], x["targets"], project=False)  # (targets, D): padding skipped
        return label_smoothed_loss(hidden, self.model.output_weight(), x["tgt_out"].view(-1)[x["targets"]], smoothing)

    def _after_out_of_memory(self, group: list[np.ndarray]) -> Optional[Update]:
        """Retry the update with every batch split in two, and lower the budget of later epochs."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.low_precision is not None:
            self.low_precision.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.progress.budget_scale *= 0.8
        halves = [half for b in group for half in (b[: len(b) // 2], b[len(b) // 2:]) if len(half)]
        event = {"step": self.progress.step, "event": "out_of_memory", "batch_sentences": [len(b) for b in group],
                 "budget_scale": self.progress.budget_scale}
        if len(halves) == len(group):  # single sentences: nothing left to split
            self._log({**event, "action": "skipped"})
            log.warning("out of memory on single sentences at step %d; update skipped", self.progress.step)
            return None
        self._log({**event, "action": "split"})
        log.warning("out of memory at step %d; retrying with the batch split in two, token budget now x%.2f",
                    self.progress.step, self.progress.budget_scale)
        return self._update(halves)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _stop_reason(self, started: float) -> Optional[str]:
        """Why to stop now, or None; rank 0 decides for all ranks."""
        return distributed.broadcast(self._local_stop_reason(started) if self.rank == 0 else None)

    def _count_bound(self) -> Optional[str]:
        """The step or epoch bound reached, if any: the same on every rank, so no collective is needed."""
        c, p = self.config, self.progress
        if p.step >= c.max_steps:
            return f"reached train.max_steps={c.max_steps}"
        if c.max_epochs and p.epoch >= c.max_epochs:
            return f"reached train.max_epochs={c.max_epochs}"
        return None

    def _local_stop_reason(self, started: float) -> Optional[str]:
        c, p = self.config, self.progress
        bound = self._count_bound()
        if bound is not None:
            return bound
        if c.max_minutes and time.monotonic() - started >= c.max_minutes * 60:
            return f"reached train.max_minutes={c.max_minutes}"
        if c.patience and p.bad_validations >= c.patience:
            return f"validation BLEU did not improve for {c.patience} validations (train.patience)"
        return None

    def train(self) -> str:
        """Train until a bound is reached; returns why it stopped. The last state is always saved.

        The host reads what the device computed (losses, skipped updates) only every
        `train.log_every` updates and before validating or saving, so it can queue the next steps'
        work while the device is busy; time and early-stopping bounds are checked at those points.
        In one process, Ctrl-C stops after the current update and saves a checkpoint there, then
        raises KeyboardInterrupt (see `_CtrlC`).
        """
        c, p = self.config, self.progress
        started = time.monotonic()
        self._seconds_before = p.train_seconds
        window = {"loss": 0.0, "nll": 0.0, "target": 0, "tokens": 0, "updates": 0, "time": time.monotonic()}
        pending: list[Update] = []
        bar = tqdm(total=c.max_steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=self.rank != 0)
        last_saved = p.step
        stream = None
        ctrl_c = _CtrlC(self.world == 1)
        try:
            with ctrl_c:
                reason = self._stop_reason(started)
                if reason is not None and self.rank == 0:
                    log.warning("nothing to train: %s already; raise that bound (e.g. --set train.max_steps=N) "
                                "to train on", reason.removeprefix("reached "))
                while reason is None:
                    if stream is None:
                        stream = self._stream()
                    try:
                        item = next(stream)
                    except Exception:
                        if not ctrl_c.pressed:
                            raise
                        reason = INTERRUPTED  # Ctrl-C reached the loader's workers too
                        break
                    p.epoch, p.batch_index = item["position"]
                    budget = p.budget_scale
                    update = self._update(item["group"], item)
                    if p.budget_scale != budget:  # out of memory: later batches are made with the lowered budget
                        stream = None
                    if update is None:  # out of memory on single sentences: logged, no step taken
                        continue
                    p.step += 1
                    pending.append(update)
                    bar.update(1)
                    if not any(p.step % every == 0 for every in (c.log_every, c.valid_every, c.save_every)) \
                            and self._count_bound() is None and not ctrl_c.pressed:
                        continue
                    self._settle(pending, window)
                    if ctrl_c.pressed:
                        reason = INTERRUPTED
                        break
                    if p.step % c.log_every == 0:
                        self._log_window(window, bar, started)
                    if p.step % c.valid_every == 0:
                        self.validate()
                    if p.step % c.save_every == 0:
                        self._checkpoint(started)
                        last_saved = p.step
                    reason = self._stop_reason(started)
        except BaseException:
            self._wait_for_writer_quietly()  # the error in hand is the one to report
            raise
        finally:
            bar.close()  # also when an error stops the run, so the terminal line is finished
            del stream  # stops the loader's worker processes
        self._settle(pending, window)
        if reason != INTERRUPTED and self.valid is not None and p.step % c.valid_every != 0:
            self.validate()
        if p.step != last_saved or p.step == 0:
            self._checkpoint(started)
        self.writer.wait()  # the last checkpoint is on disk before the run says it stopped
        self._log({"step": p.step, "event": "stop", "reason": reason})
        if reason == INTERRUPTED:
            log.warning("interrupted at step %d, saved there; run the same command to resume", p.step)
            raise KeyboardInterrupt
        log.info("stopped at step %d: %s", p.step, reason)
        return reason

    def _wait_for_writer_quietly(self) -> None:
        try:
            self.writer.wait()
        except Exception as exc:  # noqa: BLE001 (logged; another error is on its way up)
            log.error("writing a checkpoint failed too: %s", exc)

    def _settle(self, pending: list[Update], window: dict) -> None:
        """Read the pending updates' figures (one host-device synchronisation) and account for them in order.

        A skipped update (non-finite loss or gradient) is logged; too many in a row stop the run, before
        any later checkpoint is written, so the last one on disk holds good weights.
        """
        if not pending:
            return
        rows = torch.stack([u.figures for u in pending]).tolist()
        steps = [u.step for u in pending]
        pending.clear()
        p = self.progress
        for step, (loss, nll, applied, n_target, n_tokens) in zip(steps, rows):
            if applied:
                p.nonfinite = 0
                for key, value in (("loss", loss), ("nll", nll), ("target", n_target), ("tokens", n_tokens)):
                    window[key] += value
                window["updates"] += 1
                continue
            p.nonfinite += 1
            self._log({"step": step, "event": "update_skipped", "in_a_row": p.nonfinite})
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step, p.nonfinite)
            if p.nonfinite >= self.config.max_nonfinite:
                self.writer.wait()
                latest = checkpoint.latest_checkpoint(self.run_dir)
                kept = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint was written"
                raise TrainingError(f"the loss or gradient was not finite for {p.nonfinite} updates in a row at step "
                                    f"{step}; {kept}. Lower train.lr, raise train.warmup_steps or check the data")

    def _checkpoint(self, started: float) -> None:
        self.progress.train_seconds = self._seconds_before + time.monotonic() - started
        self.save()

    def _log_window(self, window: dict, bar: tqdm, started: float) -> None:
        if not window["updates"]:  # every update of the window was skipped; those are logged already
            return
        now = time.monotonic()
        seconds = max(now - window["time"], 1e-9)
        record = {"step": self.progress.step, "epoch": self.progress.epoch,
                  "loss": window["loss"] / window["target"], "nll": window["nll"] / window["target"],
                  "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": window["tokens"] / seconds,
                  "elapsed_s": now - started}
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                        epoch=record["epoch"], eta=self._eta(seconds / window["updates"], now - started))
        self._log(record)
        window.update(loss=0.0, nll=0.0, target=0, tokens=0, updates=0, time=now)

    def _eta(self, seconds_per_step: float, elapsed: float) -> str:
        """Time left until the first bound (steps or minutes) is reached; tqdm's own ETA sees steps only."""
        left = (self.config.max_steps - self.progress.step) * seconds_per_step
        if self.config.max_minutes:
            left = min(left, self.config.max_minutes * 60 - elapsed)
        minutes, seconds = divmod(int(max(left, 0)), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"

    @torch.no_grad()
    def valid_loss(self) -> float:
        assert self.valid is not None
        self.model.eval()
        total, count = 0.0, 0
        lengths = [len(s) for s in self.valid.src]
        for batch in make_batches(lengths, [len(t) for t in self.valid.tgt], self.config.max_tokens, 0, 0):
            x = collate([self.valid.src[i] for i in batch], [self.valid.tgt[i] for i in batch], self.model.start_id)
            x = {k: v.to(self.device) for k, v in x.items()}
            with self._autocast():
                _, nll = self._batch_loss(self.model, x, 0.0)
            total += float(nll)
            count += x["targets"].numel()
        return total / max(count, 1)

    def validate(self) -> None:
        """Validation loss and BLEU; keeps the best weights and counts validations without a gain."""
        if self.valid is None:
            return
        if self.rank != 0:
            distributed.barrier()  # wait while rank 0 validates
            return
        p = self.progress
        record: dict = {"step": p.step, "valid_loss": self.valid_loss()}
        if self.bleu is not None:
            bleu = self.bleu(self.model)
            record["valid_bleu"] = bleu
            if bleu > p.best_bleu:
                p.best_bleu, p.bad_validations = bleu, 0
                weights = checkpoint.weights_of(checkpoint.host_copy(self.model.state_dict()))
                self.writer.submit(functools.partial(checkpoint.save_best, self.run_dir, p.step, weights,
                                                     {"valid_bleu": f"{bleu:.2f}"}), after=self._copied())
            else:
                p.bad_validations += 1
        self._log(record)
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        distributed.barrier()
