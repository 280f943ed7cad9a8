"""`nmt serve`: trained models behind LibreTranslate's HTTP API, concurrent requests decoded in shared batches.

    api.py       the HTTP app: LibreTranslate's /translate, /languages, /health; limits, API keys
    batching.py  one decoding loop per model, batching the sentences of all waiting requests
    server.py    loading the models, listening, running uvicorn until SIGTERM or Ctrl-C
"""

from __future__ import annotations

import importlib.util

from nmt.errors import NMTError

_missing = [name for name, module in (("starlette", "starlette"), ("uvicorn", "uvicorn"),
                                      ("python-multipart", "python_multipart"))
            if importlib.util.find_spec(module) is None]
if _missing:
    raise NMTError(f"nmt serve needs {', '.join(_missing)}: pip install 'nmt[serve]'")

from nmt.serve.api import Pair, create_app  # noqa: E402 - after the check above
from nmt.serve.params import ApiKeys, Limits  # noqa: E402
from nmt.serve.batching import DecodingLoop  # noqa: E402
from nmt.serve.server import bind, load_pairs, serve  # noqa: E402

__all__ = ["ApiKeys", "DecodingLoop", "Limits", "Pair", "bind", "create_app", "load_pairs", "serve"]
