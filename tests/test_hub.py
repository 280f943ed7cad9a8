"""hub:NAME corpora when the Hugging Face hub cannot be reached: one line, exit 1, no traceback, no retries."""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

from nmt import hub
from nmt.errors import DataError
from nmt_cli.main import app

UNREACHABLE = "http://127.0.0.1:9"  # the discard port on this machine: nothing listens, the connection is refused


def train_on_hub(run_dir: Path):
    args = ["train", "--run-dir", str(run_dir), "--set", "data.train=hub:nmt-test/no-such-corpus",
            "--set", "data.src_lang=en", "--set", "data.tgt_lang=de"]
    return CliRunner().invoke(app, args)


def assert_one_line(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: hub:nmt-test/no-such-corpus: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub client waits (time.sleep) between retries: here waiting at all fails the test."""
    def refuse(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s: something retried")

    monkeypatch.setattr(time, "sleep", refuse)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's offline mode off, whatever the environment says (the settings are read at import)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_unreachable_hub_ends_at_once_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: None,
                                                  no_retries: None) -> None:
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", UNREACHABLE)
    assert_one_line(train_on_hub(tmp_path / "run"), f"cannot reach the Hugging Face hub at {UNREACHABLE}",
                    "give a local corpus instead", "HF_HUB_OFFLINE=1")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


def test_offline_mode_without_a_cached_copy_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        no_retries: None) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", UNREACHABLE)  # were anything sent, it would fail
    assert_one_line(train_on_hub(tmp_path / "run"), "not in the local dataset cache", "offline mode is on",
                    "give a local corpus instead")


def test_network_failure_during_the_load_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     online: None) -> None:
    """The hub answered the first request, then the connection broke inside `datasets`."""
    def broken(*args, **kwargs):
        try:
            raise OSError("[Errno 104] Connection reset by peer")
        except OSError as exc:
            raise RuntimeError("download failed\nsee above") from ConnectionResetError(str(exc))

    monkeypatch.setattr(hub, "check_reachable", lambda *args, **kwargs: None)
    monkeypatch.setattr(datasets, "load_dataset", broken)
    assert_one_line(train_on_hub(tmp_path / "run"), "cannot reach the Hugging Face hub", "ConnectionResetError")


def test_other_hub_failures_are_one_line_too(monkeypatch: pytest.MonkeyPatch, online: None) -> None:
    def missing(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nmt-test/no-such-corpus' doesn't exist on the Hub\nor cannot be accessed.")

    monkeypatch.setattr(hub, "check_reachable", lambda *args, **kwargs: None)
    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError) as caught:
        hub.load_hub_dataset("nmt-test/no-such-corpus", split="train")
    assert str(caught.value) == ("hub:nmt-test/no-such-corpus: cannot load split 'train' from the hub (FileNotFoundError: "
                                 "Dataset 'nmt-test/no-such-corpus' doesn't exist on the Hub or cannot be accessed.)")


def test_network_errors_are_told_from_other_errors() -> None:
    class ConnectError(Exception):  # httpx's name, without importing httpx
        pass

    refused = ConnectError("refused")
    assert hub.network_error(refused) is refused and isinstance(hub.network_error(TimeoutError()), TimeoutError)
    try:
        try:
            raise refused
        except ConnectError:
            raise ValueError("wrapped")  # raised while handling it: found through __context__
    except ValueError as exc:
        assert hub.network_error(exc) is refused
    assert hub.network_error(FileNotFoundError("no such dataset")) is None and hub.network_error(ValueError("x")) is None
