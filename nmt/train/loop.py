"""The training loop: updates (forward, backward, the optimizer step) until a bound is reached, with
validation, logging and checkpoints at their intervals, DDP, compiling, bf16 and out-of-memory retries."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt import checkpoint, distributed, precision
from nmt.config import TrainConfig
from nmt.data import TrainingData
from nmt.errors import TrainingError
from nmt.model import Transformer
from nmt.train import optim, stream
from nmt.train.bounds import count_bound, stop_reason
from nmt.train.compiling import compile_model, compile_on_fixed_shapes, compiles
from nmt.train.interrupt import INTERRUPTED, CtrlC
from nmt.train.loss import label_smoothed_loss
from nmt.train.metrics import Metrics
from nmt.train.state import Progress, RunState
from nmt.train.validation import Validation, ValidSet

log = logging.getLogger("nmt.train")


class Update(NamedTuple):
    """One update, as the device left it: read by `Trainer._settle`, every few updates, not after each."""

    step: int
    figures: torch.Tensor  # float64 (5,): summed loss, summed NLL, applied (1) or skipped (0), target tokens, all tokens


class Trainer:
    """Runs updates until a bound is hit; validates, logs to metrics.jsonl and checkpoints on the way.

    `valid` is one validation set or several (`ValidSet`s, each with its BLEU function; `bleu` is the
    one set's when it has none).

    What it holds besides the loop has a file of its own: the resumable state and its checkpoints
    (`state.RunState`), the batch stream (`stream`), the metrics (`metrics.Metrics`), validation
    (`validation.Validation`) and Ctrl-C (`interrupt.CtrlC`).
    """

    def __init__(self, model: Transformer, config: TrainConfig, run_dir: Path, corpus: TrainingData,
                 valid: Optional[ValidSet | Sequence[ValidSet]] = None,
                 bleu: Optional[Callable[[Transformer], float]] = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.config, self.run_dir = model.to(device), config, run_dir
        self.corpus, self.device = corpus, device
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.parameters = optim.freeze(model, config.freeze)  # those that train
        # Under bf16 the forward and backward run through a twin with bf16 linear weights, cast once per update;
        # on a CPU their row counts are rounded up (see `nmt.precision.RowBucketedLinear`).
        self.bf16 = precision.trains_in_bf16(config.precision, device)  # resolved once: auto's choice depends on the hardware
        self.low_precision = (optim.LowPrecisionCopy(model, torch.bfloat16, precision.train_row_bucket(device))
                              if self.bf16 else None)
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
        self.optimizer = optim.adamw(self.parameters, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, optim.inverse_sqrt(config.warmup_steps))
        self.ema = optim.MovingAverage(model, config.ema_decay) if config.ema_decay else None
        self.state = RunState(model, self.optimizer, self.scheduler, self.ema, run_dir, config.keep_last, config.seed,
                              device)
        self.metrics = Metrics(run_dir / "metrics.jsonl", self.rank)
        sets = [] if valid is None else [valid] if isinstance(valid, ValidSet) else list(valid)
        if len(sets) == 1 and sets[0].bleu is None and bleu is not None:
            sets[0] = ValidSet(sets[0].src, sets[0].tgt, sets[0].name, bleu)
        self.validation = Validation(model, sets, config, device, self._batch_loss, self._autocast) if sets else None

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def writer(self) -> checkpoint.BackgroundWriter:
        return self.state.writer

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, progress and RNG states from a step directory."""
        self.state.resume(path)

    def save(self) -> None:
        """Save a step checkpoint in the background (collective under DDP; see `RunState.save`)."""
        self.state.save()

    def validate(self) -> None:
        if self.validation is not None:
            self.validation.run(self.state, self.metrics)

    def _stream(self) -> Iterator[dict]:
        """Collated groups from the current position, prepared ahead by `train.loader_workers` processes."""
        p, c = self.progress, self.config

        def epoch_batches(epoch: int):
            return self.corpus.epoch(int(c.max_tokens * p.budget_scale), c.seed, epoch)
        positions = stream.groups(epoch_batches, p.epoch, p.batch_index, c.accum_steps, self.world, self.rank)
        return stream.stream(self.corpus, positions, self.model.start_id, c.loader_workers, self.device)

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
        collated = collated or stream.collate_group(self.corpus, group, self.model.start_id)
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
        """Compile the step on a made-up batch of fixed shape (see `compiling.compile_on_fixed_shapes`)."""
        self.uncompiled = False
        compile_on_fixed_shapes(self.model, lambda x: self._batch_loss(self.net, x, 0.0)[0], self._autocast, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if self.low_precision is not None:
            self.low_precision.clear()

    def _batch_loss(self, net: torch.nn.Module, x: dict[str, torch.Tensor], smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and NLL of one collated batch (on the device) through `net`, the model or its wrapper."""
        hidden = net(x["src"], x["tgt_in"], x["targets"], project=False)  # (targets, D): padding skipped
        args = (hidden, self.model.output_weight(), x["tgt_out"].view(-1)[x["targets"]], smoothing)
        if self.model.output_bias is not None or self.model.config.pad_in_softmax:  # a model trained elsewhere
            args += (None, self.model.output_bias, self.model.config.pad_in_softmax)
        return label_smoothed_loss(*args)

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
            self.metrics.write({**event, "action": "skipped"})
            log.warning("out of memory on single sentences at step %d; update skipped", self.progress.step)
            return None
        self.metrics.write({**event, "action": "split"})
        log.warning("out of memory at step %d; retrying with the batch split in two, token budget now x%.2f",
                    self.progress.step, self.progress.budget_scale)
        return self._update(halves)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _stop_reason(self, started: float) -> Optional[str]:
        """Why to stop now, or None; rank 0 decides for all ranks."""
        return distributed.broadcast(stop_reason(self.config, self.progress, started) if self.rank == 0 else None)

    def train(self) -> str:
        """Train until a bound is reached; returns why it stopped. The last state is always saved.

        The host reads what the device computed (losses, skipped updates) only every
        `train.log_every` updates and before validating or saving, so it can queue the next steps'
        work while the device is busy; time and early-stopping bounds are checked at those points.
        In one process, Ctrl-C stops after the current update and saves a checkpoint there, then
        raises KeyboardInterrupt (see `CtrlC`).
        """
        c, p = self.config, self.progress
        started = time.monotonic()
        self._seconds_before = p.train_seconds
        self.metrics.start_window()
        pending: list[Update] = []
        bar = tqdm(total=c.max_steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=self.rank != 0)
        last_saved = p.step
        stream = None
        ctrl_c = CtrlC(self.world == 1)
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
                            and count_bound(self.config, self.progress) is None and not ctrl_c.pressed:
                        continue
                    self._settle(pending)
                    if ctrl_c.pressed:
                        reason = INTERRUPTED
                        break
                    if p.step % c.log_every == 0:
                        self.metrics.log_window(p.step, p.epoch, self.scheduler.get_last_lr()[0], bar, started,
                                                c.max_steps - p.step, c.max_minutes)
                    if p.step % c.valid_every == 0:
                        self.validate()
                    if p.step % c.save_every == 0:
                        self._checkpoint(started)
                        last_saved = p.step
                    reason = self._stop_reason(started)
        except BaseException:
            self.state.wait_quietly()  # the error in hand is the one to report
            raise
        finally:
            bar.close()  # also when an error stops the run, so the terminal line is finished
            del stream  # stops the loader's worker processes
        self._settle(pending)
        if reason != INTERRUPTED and self.validation is not None and p.step % c.valid_every != 0:
            self.validate()
        if p.step != last_saved or p.step == 0:
            self._checkpoint(started)
        self.writer.wait()  # the last checkpoint is on disk before the run says it stopped
        self.metrics.write({"step": p.step, "event": "stop", "reason": reason})
        if reason == INTERRUPTED:
            log.warning("interrupted at step %d, saved there; run the same command to resume", p.step)
            raise KeyboardInterrupt
        log.info("stopped at step %d: %s", p.step, reason)
        return reason

    def _settle(self, pending: list[Update]) -> None:
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
                self.metrics.add(loss, nll, n_target, n_tokens)
                continue
            p.nonfinite += 1
            self.metrics.write({"step": step, "event": "update_skipped", "in_a_row": p.nonfinite})
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
