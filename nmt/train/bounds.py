"""When training stops: the step, epoch and time bounds and early stopping, and the reason given."""

from __future__ import annotations

import time
from typing import Optional

from nmt.config import TrainConfig
from nmt.train.state import Progress


def count_bound(config: TrainConfig, progress: Progress) -> Optional[str]:
    """The step or epoch bound reached, if any: the same on every rank, so no collective is needed."""
    if progress.step >= config.max_steps:
        return f"reached train.max_steps={config.max_steps}"
    if config.max_epochs and progress.epoch >= config.max_epochs:
        return f"reached train.max_epochs={config.max_epochs}"
    return None


def stop_reason(config: TrainConfig, progress: Progress, started: float) -> Optional[str]:
    """Why to stop now (`started`: time.monotonic() when this invocation began training), or None."""
    bound = count_bound(config, progress)
    if bound is not None:
        return bound
    if config.max_minutes and time.monotonic() - started >= config.max_minutes * 60:
        return f"reached train.max_minutes={config.max_minutes}"
    if config.patience and progress.bad_validations >= config.patience:
        return f"validation BLEU did not improve for {config.patience} validations (train.patience)"
    return None
