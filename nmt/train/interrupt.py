"""Ctrl-C during training: stop after the current update and save there, instead of losing the updates
since the last checkpoint."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("nmt.train")

INTERRUPTED = "interrupted (Ctrl-C)"


class CtrlC:
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

    def __enter__(self) -> "CtrlC":
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
