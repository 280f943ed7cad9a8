"""Datasets and models from the Hugging Face hub: loading one, and turning every way the hub can fail into one
DataError line.

Left alone, `datasets` meets an unreachable hub by retrying each request five times over about
25 seconds, logging the URL at every try, and then raises a ConnectionError whose traceback ends
the program. Here one short request first checks that the hub answers at all (huggingface_hub's own
HTTP client, so its proxy and certificate settings apply); if it does not, loading stops at once
with a line saying so and what to give instead. In offline mode (HF_HUB_OFFLINE=1 or
HF_DATASETS_OFFLINE=1) nothing is sent: `datasets` answers from its cache, and a dataset missing
there gets the same kind of line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional

from nmt.errors import DataError

# Seconds the reachability check waits for the hub's answer (huggingface_hub's own metadata timeout).
PROBE_TIMEOUT_S = 10.0
# What a user can give instead of a hub dataset, for the library's callers (the recipes say their own).
LOCAL_INSTEAD = "give a local corpus instead (file prefix, .tsv, .jsonl or a save_to_disk directory)"
# Exceptions of the HTTP stacks under `datasets` (httpx, requests, aiohttp, urllib3) that mean the
# network failed, not the request; matched by name so that none of them has to be imported here.
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TimeoutException",
                   "ReadTimeout", "ReadError", "ProxyError", "SSLError", "ClientConnectorError",
                   "ServerDisconnectedError", "MaxRetryError", "NewConnectionError", "OfflineModeIsEnabled"}


def offline() -> bool:
    """Whether the hub's offline setting (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE) is on for `datasets`."""
    from datasets import config

    return bool(getattr(config, "HF_HUB_OFFLINE", False) or getattr(config, "HF_DATASETS_OFFLINE", False))


def endpoint() -> str:
    """The hub address `datasets` talks to (HF_ENDPOINT, by default https://huggingface.co)."""
    from datasets import config

    return str(getattr(config, "HF_ENDPOINT", "https://huggingface.co")).rstrip("/")


def network_error(exc: BaseException) -> Optional[BaseException]:
    """`exc`, or the exception it was raised from, that says the network failed (not a missing dataset); else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in _NETWORK_ERRORS:
            return exc
        if "Couldn't reach" in str(exc):  # older `datasets` wrap this message into a FileNotFoundError
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def unreachable(where: str, reason: str, instead: str = LOCAL_INSTEAD) -> DataError:
    """The one-line error for a hub that cannot be reached (or may not be, in offline mode)."""
    if offline():
        return DataError(f"{where}: not in the local dataset cache, and the hub's offline mode is on "
                         f"(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE); {instead}, or turn offline mode off to download it")
    return DataError(f"{where}: cannot reach the Hugging Face hub at {endpoint()} ({reason}); {instead}, "
                     f"or set HF_HUB_OFFLINE=1 to use a copy downloaded earlier")


def check_reachable(where: str, instead: str = LOCAL_INSTEAD, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise DataError unless the hub answers one request within `timeout` seconds; any HTTP answer will do.

    One try, no retries: a machine without network learns it at once instead of after the
    hub client's backoff.
    """
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint(), timeout=timeout)
    except Exception as exc:  # the client's own exception types differ between its versions
        raise unreachable(where, _reason(exc), instead) from None


@contextlib.contextmanager
def hub_errors(where: str, instead: str = LOCAL_INSTEAD, what: str = "it") -> Iterator[None]:
    """Turn any exception of the hub clients inside the block into one DataError line.

    Wrap the iteration of a streaming dataset in it too: its records are fetched while iterating.
    `what` names what was being loaded, for errors other than the network's (e.g. "split 'train'").
    """
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # datasets and huggingface_hub raise many types; the user gets one line
        cause = network_error(exc)
        if cause is not None:
            raise unreachable(where, _reason(cause), instead) from None
        raise DataError(f"{where}: cannot load {what} from the hub ({_reason(exc)})") from None


def load_hub_dataset(name: str, config: Optional[str] = None, split: Optional[str] = None,
                     streaming: bool = False, instead: str = LOCAL_INSTEAD) -> Any:
    """`datasets.load_dataset(name, config, split=split, streaming=streaming)`, failing in one DataError line.

    Without a split it returns the DatasetDict of all splits; with `streaming` an IterableDataset
    (iterate it inside `hub_errors`). `instead` says what the user can give in place of the hub
    dataset, for the message when the hub cannot be reached.
    """
    import datasets

    where = f"hub:{name}"
    if not offline():
        check_reachable(where, instead)
    with hub_errors(where, instead, f"split '{split}'" if split else "it"):
        return datasets.load_dataset(name, config or None, split=split, streaming=streaming)


def _reason(exc: BaseException) -> str:
    """'Type: message' of an exception on one line (hub errors often span several)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


MODEL_INSTEAD = "give a local model directory instead (one saved with save_pretrained, or downloaded before)"


def download_model(name: str, patterns: list[str]) -> Path:
    """The local directory of hub model `name`, downloaded (the files matching `patterns`) through huggingface_hub
    into its cache; in offline mode (HF_HUB_OFFLINE=1) only a copy cached before. Every failure is one
    DataError line, and an unreachable hub is found out by one short request, before any download."""
    import huggingface_hub
    from huggingface_hub import constants

    where = f"hub:{name}"
    if getattr(constants, "HF_HUB_OFFLINE", False):
        try:
            return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached, whatever the client's type for it
            raise DataError(f"{where}: not in the local hub cache, and the hub's offline mode is on (HF_HUB_OFFLINE); "
                            f"{MODEL_INSTEAD}, or turn offline mode off to download it") from None
    check_reachable(where, MODEL_INSTEAD)
    with hub_errors(where, MODEL_INSTEAD):
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns))
