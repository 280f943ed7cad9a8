"""Errors the library raises for bad input: each says what was wrong and what to do."""

from __future__ import annotations


class NMTError(Exception):
    """Base class: a problem the user can fix. The CLI prints it as one line."""


class ConfigError(NMTError):
    """A config key is unknown, a value has the wrong type, or values contradict each other.

    `key` names the config key at fault where there is one ("decode.beam"), so that a command line
    can name its own option for it instead (`--beam`).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DataError(NMTError):
    """A corpus or input file is missing, unreadable, misaligned or empty."""


class CheckpointError(NMTError):
    """A model directory or checkpoint is missing, corrupt, or does not match its tokenizer."""


class TrainingError(NMTError):
    """Training cannot go on (for example the loss stays non-finite); the last checkpoint is kept."""
