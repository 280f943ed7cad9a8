"""A run's metrics: the records of metrics.jsonl (rank 0 writes them), and the training figures summed
over a window of updates for the log line and the progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from tqdm import tqdm


class Metrics:
    """Appends records to `path` (on rank 0 only) and sums the figures of the updates since the last log line."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path, self.rank = path, rank
        self.start_window()

    def start_window(self) -> None:
        """Sum from now on (training starts, or the window was logged)."""
        self.window = {"loss": 0.0, "nll": 0.0, "target": 0, "tokens": 0, "updates": 0, "time": time.monotonic()}

    def write(self, record: dict) -> None:
        if self.rank != 0:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def add(self, loss: float, nll: float, n_target: float, n_tokens: float) -> None:
        """Count one applied update's summed loss and NLL and its target and total token counts."""
        w = self.window
        for key, value in (("loss", loss), ("nll", nll), ("target", n_target), ("tokens", n_tokens)):
            w[key] += value
        w["updates"] += 1

    def log_window(self, step: int, epoch: int, lr: float, bar: tqdm, started: float, steps_left: int,
                   minutes_bound: float) -> None:
        """Write the window's record (mean loss and NLL per target token, tokens/s) and show it on `bar` with
        the time left until `steps_left` more steps or `minutes_bound` minutes since `started`. An empty
        window (every update skipped) writes nothing."""
        w = self.window
        if not w["updates"]:  # every update of the window was skipped; those are logged already
            return
        now = time.monotonic()
        seconds = max(now - w["time"], 1e-9)
        record = {"step": step, "epoch": epoch, "loss": w["loss"] / w["target"], "nll": w["nll"] / w["target"],
                  "lr": lr, "tokens_per_s": w["tokens"] / seconds, "elapsed_s": now - started}
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                        epoch=record["epoch"],
                        eta=time_left(steps_left, seconds / w["updates"], minutes_bound, now - started))
        self.write(record)
        w.update(loss=0.0, nll=0.0, target=0, tokens=0, updates=0, time=now)


def time_left(steps_left: int, seconds_per_step: float, minutes_bound: float, elapsed: float) -> str:
    """H:MM:SS until the first bound (steps or minutes) is reached; tqdm's own ETA sees steps only."""
    left = steps_left * seconds_per_step
    if minutes_bound:
        left = min(left, minutes_bound * 60 - elapsed)
    minutes, seconds = divmod(int(max(left, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
