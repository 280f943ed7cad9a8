"""nmt: train, run and score encoder-decoder transformer translation models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    # `from nmt import Translator` without importing torch for every `import nmt`.
    if name == "Translator":
        from nmt.translator import Translator

        return Translator
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
