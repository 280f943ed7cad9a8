"""What a Hugging Face model directory holds, read lazily: config.json, the tokenizer's files, and the weights
tensor by tensor (safetensors, sharded or not, or a PyTorch pickle opened memory-mapped and weights-only)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from nmt.errors import CheckpointError, DataError

HUB_PREFIX = "hub:"
# What a translation model's repository needs; its other files (other frameworks' weights) are not fetched.
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.json", "*.spm",
             "*.model", "pytorch_model*.bin"]


class HFModel:
    """A Hugging Face model directory: `config`, `files`, and `tensor(name)` read from its weights on demand."""

    def __init__(self, directory: Path, where: str = "") -> None:
        self.directory, self.where = Path(directory), where or str(directory)
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise DataError(f"{self.where}: no config.json; give a Hugging Face model directory or hub:NAME")
        self.config: dict[str, Any] = self.json("config.json")
        self._open: dict[Path, Any] = {}
        self._index = self._weight_index()

    def json(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.where}: {name} unreadable ({exc})") from None

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def file(self, name: str) -> Path:
        path = self.directory / name
        if not path.is_file():
            raise DataError(f"{self.where}: {name} missing; the tokenizer cannot be imported without it")
        return path

    @property
    def names(self) -> list[str]:
        return list(self._index)

    def tensor(self, name: str) -> torch.Tensor:
        """One weight, read now (a copy in memory: the caller keeps it as long as it needs it)."""
        path = self._index.get(name)
        if path is None:
            raise KeyError(name)
        if path.suffix == ".safetensors":
            # Opened for each tensor: the file's pages stay mapped (and counted in the process's memory)
            # only while one tensor is copied out, not until the whole model has been read.
            with _safetensors(path) as handle:
                return handle.get_tensor(name)
        return self._handle(path)[name]

    def find(self, *names: str) -> Optional[torch.Tensor]:
        """The first of `names` the weights hold, or None."""
        return next((self.tensor(n) for n in names if n in self._index), None)

    def _weight_index(self) -> dict[str, Path]:
        d = self.directory
        if (d / "model.safetensors.index.json").is_file():
            shards = self.json("model.safetensors.index.json").get("weight_map", {})
            return {name: d / shard for name, shard in shards.items()}
        if (d / "model.safetensors").is_file():
            with _safetensors(d / "model.safetensors") as f:
                return {name: d / "model.safetensors" for name in f.keys()}
        if (d / "pytorch_model.bin.index.json").is_file():
            shards = self.json("pytorch_model.bin.index.json").get("weight_map", {})
            return {name: d / shard for name, shard in shards.items()}
        if (d / "pytorch_model.bin").is_file():
            return {name: d / "pytorch_model.bin" for name in self._handle(d / "pytorch_model.bin")}
        raise DataError(f"{self.where}: no weights (model.safetensors or pytorch_model.bin)")

    def _handle(self, path: Path) -> Any:
        """A PyTorch pickle's tensors: weights only (a crafted pickle cannot run code), memory-mapped."""
        if path not in self._open:
            try:
                self._open[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for a bad file
                raise CheckpointError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
        return self._open[path]


@contextlib.contextmanager
def _safetensors(path: Path) -> Iterator[Any]:
    """A safetensors file opened for reading; a bad file is one CheckpointError line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            yield handle
    except Exception as exc:  # safetensors raises its own types for a bad file
        raise CheckpointError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None


def resolve(source: str) -> HFModel:
    """The model SOURCE names: a local directory, or `hub:NAME` downloaded through huggingface_hub (one line
    and no download when the hub cannot be reached)."""
    if source.startswith(HUB_PREFIX):
        from nmt.hub import download_model

        name = source[len(HUB_PREFIX):]
        return HFModel(download_model(name, HUB_FILES), source)
    path = Path(source)
    if not path.is_dir():
        raise DataError(f"{source}: no such directory; give a Hugging Face model directory or hub:NAME")
    return HFModel(path)
