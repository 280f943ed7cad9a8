"""nmt: train, run and score encoder-decoder transformer translation models."""

from __future__ import annotations

__version__ = "0.1.0"
