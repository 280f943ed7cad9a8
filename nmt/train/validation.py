"""Validation during training: the loss on the validation set and its BLEU (decoded by a callable the
caller passes, so training never imports decoding or scoring), the best weights kept, and the
validations without a gain counted for early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from tqdm import tqdm

from nmt import distributed
from nmt.config import TrainConfig
from nmt.data import collate, make_batches
from nmt.model import Transformer
from nmt.train.metrics import Metrics
from nmt.train.state import RunState

BatchLoss = Callable[[torch.nn.Module, dict[str, torch.Tensor], float], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ValidSet:
    src: list[list[int]]
    tgt: list[list[int]]


class Validation:
    """Validates the model of a run: `run()` at each train.valid_every updates."""

    def __init__(self, model: Transformer, valid: ValidSet, bleu: Optional[Callable[[Transformer], float]],
                 config: TrainConfig, device: torch.device, batch_loss: BatchLoss,
                 autocast: Callable[[], ContextManager]) -> None:
        self.model, self.valid, self.bleu, self.config, self.device = model, valid, bleu, config, device
        self.batch_loss, self.autocast = batch_loss, autocast

    @torch.no_grad()
    def loss(self) -> float:
        """The mean NLL per target token of the validation set (no label smoothing)."""
        self.model.eval()
        total, count = 0.0, 0
        lengths = [len(s) for s in self.valid.src]
        for batch in make_batches(lengths, [len(t) for t in self.valid.tgt], self.config.max_tokens, 0, 0):
            x = collate([self.valid.src[i] for i in batch], [self.valid.tgt[i] for i in batch], self.model.start_id)
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
        record: dict = {"step": p.step, "valid_loss": self.loss()}
        if self.bleu is not None:
            bleu = self.bleu(self.model)
            record["valid_bleu"] = bleu
            if bleu > p.best_bleu:
                p.best_bleu, p.bad_validations = bleu, 0
                state.save_best(bleu)
            else:
                p.bad_validations += 1
        metrics.write(record)
        tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        distributed.barrier()
