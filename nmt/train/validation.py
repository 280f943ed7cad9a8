"""Validation during training: the loss on each validation set and its BLEU (decoded by a callable the
caller passes, so training never imports decoding or scoring), the best weights kept, and the
validations without a gain counted for early stopping: both go by one set (train.best_on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Sequence

import torch
from tqdm import tqdm

from nmt import distributed
from nmt.config import MEAN, TrainConfig
from nmt.data import collate, make_batches
from nmt.errors import ConfigError
from nmt.model import Transformer
from nmt.train.metrics import Metrics
from nmt.train.state import RunState

BatchLoss = Callable[[torch.nn.Module, dict[str, torch.Tensor], float], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ValidSet:
    """A validation set's token ids, its name (data.valid's) and the function that gives a model's BLEU on it."""

    src: list[list[int]]
    tgt: list[list[int]]
    name: str = "valid"
    bleu: Optional[Callable[[Transformer], float]] = None


def _mean(scores: list[dict]) -> dict:
    """The mean of each score over the sets (train.best_on: mean); BLEU only where every set has it."""
    return {key: sum(found[key] for found in scores) / len(scores) for key in scores[0]
            if all(key in found for found in scores)}


class Validation:
    """Validates the model of a run on every set: `run()` at each train.valid_every updates. The record's
    valid_loss and valid_bleu are those of the set train.best_on names (the first by default), or with
    best_on "mean" their means over the sets; with
    several sets, `valid_sets` holds each one's."""

    def __init__(self, model: Transformer, sets: Sequence[ValidSet], config: TrainConfig, device: torch.device,
                 batch_loss: BatchLoss, autocast: Callable[[], ContextManager]) -> None:
        self.model, self.sets, self.config, self.device = model, list(sets), config, device
        self.batch_loss, self.autocast = batch_loss, autocast
        names = [s.name for s in self.sets]
        if config.best_on and config.best_on != MEAN and config.best_on not in names:
            raise ConfigError(f"train.best_on: {config.best_on!r} is not a validation set ({', '.join(names)}, "
                              f"or {MEAN})")
        self.chosen = None if config.best_on == MEAN else names.index(config.best_on) if config.best_on else 0

    @torch.no_grad()
    def loss(self, valid: ValidSet) -> float:
        """The mean NLL per target token of a validation set (no label smoothing)."""
        self.model.eval()
        total, count = 0.0, 0
        lengths = [len(s) for s in valid.src]
        for batch in make_batches(lengths, [len(t) for t in valid.tgt], self.config.max_tokens, 0, 0):
            x = collate([valid.src[i] for i in batch], [valid.tgt[i] for i in batch], self.model.start_id)
            x = {k: v.to(self.device) for k, v in x.items()}
            with self.autocast():
                _, nll = self.batch_loss(self.model, x, 0.0)
            total += float(nll)
            count += x["targets"].numel()
        return total / max(count, 1)

    def run(self, state: RunState, metrics: Metrics) -> None:
        """Validation loss and BLEU; keeps the best weights and counts validations without a gain.
        Rank 0 validates while the other ranks wait for it."""
        if state.rank != 0:
            distributed.barrier()
            return
        p = state.progress
        scores = []
        for valid in self.sets:
            found = {"loss": self.loss(valid)}
            if valid.bleu is not None:
                found["bleu"] = valid.bleu(self.model)
            scores.append(found)
        chosen = scores[self.chosen] if self.chosen is not None else _mean(scores)
        record: dict = {"step": p.step, "valid_loss": chosen["loss"]}
        if "bleu" in chosen:
            bleu = record["valid_bleu"] = chosen["bleu"]
            if bleu > p.best_bleu:
                p.best_bleu, p.bad_validations = bleu, 0
                state.save_best(bleu)
            else:
                p.bad_validations += 1
        if len(self.sets) > 1:
            record["valid_sets"] = {valid.name: found for valid, found in zip(self.sets, scores)}
        metrics.write(record)
        shown = {k: v for k, v in record.items() if k != "valid_sets"}
        for name, found in record.get("valid_sets", {}).items():
            shown.update({f"{name}_{k}": v for k, v in found.items()})
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
        distributed.barrier()
