"""Training: label-smoothed loss, AdamW with inverse-sqrt warmup, the loop, validation and checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt import checkpoint, distributed
from nmt.config import TrainConfig
from nmt.data import TokenizedCorpus, collate, make_batches
from nmt.errors import TrainingError
from nmt.model import Transformer
from nmt.tokenizer import PAD_ID

log = logging.getLogger(__name__)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL over non-padding targets.

    logits (..., V), target (...) of the same leading shape. Smoothing spreads `smoothing` of the mass uniformly over the
    vocabulary but padding (Szegedy et al., 2016), as in the transformer paper: the model gives
    padding a -inf logit, so it is no class. One log-softmax serves both sums: the (B*T, V)
    log-probabilities are the largest tensor of a step, so they are made once.
    """
    log_probs = torch.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)
    target = target.reshape(-1)
    nll = F.nll_loss(log_probs, target, ignore_index=PAD_ID, reduction="sum")
    if smoothing == 0:
        return nll, nll.detach()
    assert PAD_ID == 0  # the classes are the columns after it
    classes = log_probs[:, 1:]
    uniform = -(classes.sum(-1) * (target != PAD_ID)).sum() / classes.size(-1)
    return (1 - smoothing) * nll + smoothing * uniform, nll.detach()


def inverse_sqrt(warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup to 1 over `warmup_steps`, then decay with 1/sqrt(step)."""
    def factor(step: int) -> float:
        step += 1
        if warmup_steps == 0:
            return 1.0 / math.sqrt(step)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))
    return factor


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


@dataclass
class ValidSet:
    src: list[list[int]]
    tgt: list[list[int]]


class Trainer:
    """Runs updates until a bound is hit; validates, logs to metrics.jsonl and checkpoints on the way."""

    def __init__(self, model: Transformer, config: TrainConfig, run_dir: Path, corpus: TokenizedCorpus,
                 valid: Optional[ValidSet] = None, bleu: Optional[Callable[[Transformer], float]] = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.model, self.config, self.run_dir = model.to(device), config, run_dir
        self.corpus, self.valid, self.bleu, self.device = corpus, valid, bleu, device
        self.world, self.rank = distributed.world_size(), distributed.rank()
        # Under torchrun the model runs wrapped in DDP, which averages gradients over ranks.
        self.net = model if self.world == 1 else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:  # dynamic shapes: batches of new lengths do not recompile
            self.net = torch.compile(self.net, dynamic=True)
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay, eps=1e-8, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, inverse_sqrt(config.warmup_steps))
        self.progress = Progress()
        # The moving average of the weights lives in a second model, so it saves and loads like one.
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if config.ema_decay else None
        self.src_lengths = [len(s) for s in corpus.src]
        self.tgt_lengths = [len(t) for t in corpus.tgt]
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
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scheduler, progress and RNG states from a step directory."""
        checkpoint.load_checkpoint_weights(self.model, path)
        state = checkpoint.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
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
        """Collective under DDP (every rank's RNG state is gathered); only rank 0 writes."""
        state = self.state()
        if self.rank == 0:
            checkpoint.save_checkpoint(self.run_dir, self.progress.step, self.model, state, self.config.keep_last)
            if self.ema is not None:
                checkpoint.save_ema(self.run_dir, self.progress.step, self.ema)

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def _epoch_batches(self) -> list[list[int]]:
        budget = int(self.config.max_tokens * self.progress.budget_scale)
        return make_batches(self.src_lengths, self.tgt_lengths, budget, self.config.seed, self.progress.epoch)

    def _next_group(self, batches: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
        """This rank's share of the next `accum_steps * world` batches, moving into the next epoch when one runs out."""
        group = []
        while len(group) < self.config.accum_steps * self.world:
            if self.progress.batch_index >= len(batches):
                self.progress.epoch += 1
                self.progress.batch_index = 0
                batches = self._epoch_batches()
            group.append(batches[self.progress.batch_index])
            self.progress.batch_index += 1
        share = self.config.accum_steps
        return group[self.rank * share:(self.rank + 1) * share], batches

    def _update(self, group: list[list[int]]) -> Optional[tuple[float, float, int, int]]:
        """One optimizer update over the batches of `group`: loss, nll, target and all tokens.

        Returns None when the update was skipped: its loss or gradient was not finite, or even
        single sentences ran out of memory.
        """
        self.model.train()
        inputs = [collate([self.corpus.src[i] for i in b], [self.corpus.tgt[i] for i in b], self.model.start_id) for b in group]
        n_target = sum(int((x["tgt_out"] != PAD_ID).sum()) for x in inputs)
        n_tokens = n_target + sum(int((x["src"] != PAD_ID).sum()) for x in inputs)
        n_target, n_tokens = (int(n) for n in distributed.all_sum([n_target, n_tokens], self.device))
        try:
            total_loss, total_nll = self._accumulate(inputs, n_target)
        except torch.OutOfMemoryError:
            if self.world > 1:  # ranks cannot retry on their own without deadlocking the others
                raise TrainingError(f"out of memory at step {self.progress.step} on rank {self.rank}; "
                                    "lower train.max_tokens and raise train.accum_steps") from None
            return self._after_out_of_memory(group)
        total_loss, total_nll = distributed.all_sum([total_loss, total_nll], self.device)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm or math.inf)
        if not (math.isfinite(total_loss) and math.isfinite(float(norm))):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            with torch.no_grad():
                for average, weight in zip(self.ema.parameters(), self.model.parameters()):
                    average.lerp_(weight, 1.0 - self.config.ema_decay)
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss / n_target, total_nll / n_target, n_target, n_tokens

    def _accumulate(self, inputs: list[dict[str, torch.Tensor]], n_target: int) -> tuple[float, float]:
        """Forward and backward over each batch; gradients sum to those of the loss per target token.

        `n_target` counts the target tokens of all ranks; DDP averages gradients over ranks, so each
        rank scales its loss by the world size to get the sum over the global batch.
        """
        total_loss = total_nll = 0.0
        for index, x in enumerate(inputs):
            x = {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
            last = index == len(inputs) - 1
            with self._autocast(), (nullcontext() if last or self.world == 1 else self.net.no_sync()):
                targets = x["tgt_out"] != PAD_ID
                logits = self.net(x["src"], x["tgt_in"], targets)  # (targets, V): padded positions skipped
                loss, nll = label_smoothed_loss(logits, x["tgt_out"][targets], self.config.label_smoothing)
                (loss * self.world / n_target).backward()
            total_loss += float(loss.detach())
            total_nll += float(nll)
        return total_loss, total_nll

    def _after_out_of_memory(self, group: list[list[int]]) -> Optional[tuple[float, float, int, int]]:
        """Retry the update with every batch split in two, and lower the budget of later epochs."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.progress.budget_scale *= 0.8
        halves = [half for b in group for half in (b[: len(b) // 2], b[len(b) // 2:]) if half]
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
        precision = self.config.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _stop_reason(self, started: float) -> Optional[str]:
        """Why to stop now, or None; rank 0 decides for all ranks."""
        return distributed.broadcast(self._local_stop_reason(started) if self.rank == 0 else None)

    def _local_stop_reason(self, started: float) -> Optional[str]:
        c, p = self.config, self.progress
        if p.step >= c.max_steps:
            return f"reached train.max_steps={c.max_steps}"
        if c.max_epochs and p.epoch >= c.max_epochs:
            return f"reached train.max_epochs={c.max_epochs}"
        if c.max_minutes and time.monotonic() - started >= c.max_minutes * 60:
            return f"reached train.max_minutes={c.max_minutes}"
        if c.patience and p.bad_validations >= c.patience:
            return f"validation BLEU did not improve for {c.patience} validations (train.patience)"
        return None

    def train(self) -> str:
        """Train until a bound is reached; returns why it stopped. The last state is always saved."""
        c, p = self.config, self.progress
        started = time.monotonic()
        self._seconds_before = p.train_seconds
        batches = self._epoch_batches()
        window = {"loss": 0.0, "nll": 0.0, "target": 0, "tokens": 0, "updates": 0, "time": time.monotonic()}
        bar = tqdm(total=c.max_steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=self.rank != 0)
        last_saved = p.step
        try:
            reason = self._stop_reason(started)
            while reason is None:
                group, batches = self._next_group(batches)
                result = self._update(group)
                if result is None:
                    self._skipped_update()
                    reason = self._stop_reason(started)
                    continue
                p.nonfinite = 0
                loss, nll, n_target, n_tokens = result
                p.step += 1
                for key, value in (("loss", loss * n_target), ("nll", nll * n_target), ("target", n_target), ("tokens", n_tokens)):
                    window[key] += value
                window["updates"] += 1
                bar.update(1)
                if p.step % c.log_every == 0:
                    self._log_window(window, bar, started)
                if p.step % c.valid_every == 0:
                    self.validate()
                if p.step % c.save_every == 0:
                    self._checkpoint(started)
                    last_saved = p.step
                reason = self._stop_reason(started)
        finally:
            bar.close()  # also when an error stops the run, so the terminal line is finished
        if self.valid is not None and p.step % c.valid_every != 0:
            self.validate()
        if p.step != last_saved or p.step == 0:
            self._checkpoint(started)
        self._log({"step": p.step, "event": "stop", "reason": reason})
        log.info("stopped at step %d: %s", p.step, reason)
        return reason

    def _skipped_update(self) -> None:
        """Count a skipped update; too many in a row stop the run with the last checkpoint untouched."""
        p = self.progress
        p.nonfinite += 1
        self._log({"step": p.step, "event": "update_skipped", "in_a_row": p.nonfinite})
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", p.step, p.nonfinite)
        if p.nonfinite >= self.config.max_nonfinite:
            latest = checkpoint.latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint {latest} is intact" if latest else "no checkpoint was written"
            raise TrainingError(f"the loss or gradient was not finite for {p.nonfinite} updates in a row at step {p.step}; "
                                f"{kept}. Lower train.lr, raise train.warmup_steps or check the data")

    def _checkpoint(self, started: float) -> None:
        self.progress.train_seconds = self._seconds_before + time.monotonic() - started
        self.save()

    def _log_window(self, window: dict, bar: tqdm, started: float) -> None:
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
                logits = self.model(x["src"], x["tgt_in"])
            _, nll = label_smoothed_loss(logits, x["tgt_out"], 0.0)
            total += float(nll)
            count += int((x["tgt_out"] != PAD_ID).sum())
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
                checkpoint.save_best(self.run_dir, p.step, self.model, {"valid_bleu": f"{bleu:.2f}"})
            else:
                p.bad_validations += 1
        self._log(record)
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        distributed.barrier()
