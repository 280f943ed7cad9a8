"""A converted model as an ordinary nmt run directory (`nmt import`), and a model to start training from
(`model.init`): an nmt run directory, or a Hugging Face directory converted on the way."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from nmt import atomic, checkpoint
from nmt.config import Config, merge, save_config, to_dict, validate
from nmt.errors import CheckpointError, DataError
from nmt.importing import m2m100, marian
from nmt.importing.convert import Converted, UnsupportedModel
from nmt.importing.source import HUB_PREFIX, HFModel, resolve
from nmt.model import Transformer, count_parameters
from nmt.tokenizer import VOCAB_FILE, load_tokenizer
from nmt.translator import CONFIG_FILE, read_stored_config

log = logging.getLogger("nmt.import")

FAMILIES = {"marian": marian.convert, "m2m_100": m2m100.convert}


def convert(hf: HFModel) -> Converted:
    """The model of a Hugging Face directory in nmt's terms (MarianMT, M2M100, NLLB-200), or UnsupportedModel."""
    family = hf.config.get("model_type")
    if family not in FAMILIES:
        raise UnsupportedModel(f"{hf.where}: model_type={family!r} is not one nmt imports "
                               f"(MarianMT: marian; M2M100 and NLLB-200: m2m_100)")
    return FAMILIES[family](hf)


def config_of(converted: Converted, source: str, hf: Optional[HFModel] = None, src_lang: str = "",
              tgt_lang: str = "") -> Config:
    """The run's config: the converted sections, the languages asked for, and decoding as the model's
    generation config has it (its beam)."""
    data = {**converted.data, **({"src_lang": src_lang} if src_lang else {}), **({"tgt_lang": tgt_lang} if tgt_lang else {})}
    data["max_tokens_per_side"] = min(128, converted.model["max_positions"] - 2)
    generation = hf.json("generation_config.json") if hf is not None and hf.has("generation_config.json") else {}
    decode = {"beam": int(generation.get("num_beams") or hf.config.get("num_beams") or 5) if hf is not None else 5}
    config = merge({"data": data, "tokenizer": converted.tokenizer,
                    "model": {**converted.model, "imported_from": source}, "decode": decode})
    validate(config)
    return config


def _check_names(config: Config, converted: Converted) -> None:
    """The converted weights are exactly those of the nmt model the config describes (an importer's bug
    would otherwise surface as a load error far from here)."""
    with torch.device("meta"):
        model = Transformer(config.model, len(converted.vocab.source), len(converted.vocab.target))
    wanted = {name for name, _ in model.named_parameters()}
    if set(converted.weights) != wanted:
        raise UnsupportedModel(f"the converted weights do not fit nmt's model (missing "
                               f"{sorted(wanted - set(converted.weights))[:3]}, extra {sorted(set(converted.weights) - wanted)[:3]})")
    for name, parameter in model.named_parameters():
        if tuple(converted.weights[name].shape) != tuple(parameter.shape):
            raise UnsupportedModel(f"{name}: converted shape {tuple(converted.weights[name].shape)}, "
                                   f"nmt's model wants {tuple(parameter.shape)}")


def write_tokenizer(converted: Converted, directory: Path) -> None:
    for name, path in converted.spm.items():
        shutil.copyfile(path, directory / name)
    converted.vocab.write(directory / VOCAB_FILE)


def import_model(source: str, run_dir: Path, src_lang: str = "", tgt_lang: str = "") -> dict[str, Any]:
    """Convert the model SOURCE names (a Hugging Face directory or hub:NAME) into the new run directory
    `run_dir`: config.yaml saying where it came from, the tokenizer's files, the weights as a
    checkpoint. `src_lang`/`tgt_lang` set the run's default languages (data.src_lang/tgt_lang).
    Nothing is written unless all of it is; memory stays near one copy of the weights."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise DataError(f"{run_dir} exists and is not empty; --run-dir names a new directory")
    hf = resolve(source)
    converted = convert(hf)
    config = config_of(converted, source, hf, src_lang, tgt_lang)
    _check_names(config, converted)
    run_dir.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        tmp.mkdir()
        save_config(config, tmp / CONFIG_FILE)
        write_tokenizer(converted, tmp)
        checkpoint.save_best(tmp, 0, converted.weights, {"imported_from": source})
    atomic.atomic_write(run_dir, write, existing="empty")
    parameters = sum(t.numel() for name, t in converted.weights.items())
    for note in converted.notes:
        log.info("%s", note)
    log.info("imported %s (%s, %s parameters) into %s", source, hf.config.get("model_type"), f"{parameters:,}", run_dir)
    return {"run_dir": str(run_dir), "model_type": hf.config.get("model_type"), "parameters": parameters,
            "vocabulary": len(converted.vocab.source), "languages": sorted(converted.vocab.tags),
            "language_tags": config.tokenizer.language_tags}


@dataclass
class Initial:
    """A model to start training from: its config sections, a way to put its tokenizer into a run
    directory, and its weights (loaded when asked)."""

    path: str
    config: Config
    converted: Optional[Converted] = None  # a Hugging Face directory's, converted in memory

    def write_tokenizer(self, run_dir: Path) -> None:
        if self.converted is not None:
            write_tokenizer(self.converted, run_dir)
            return
        for file in load_tokenizer(Path(self.path), self.config.tokenizer.language_tags).files:
            shutil.copyfile(file, run_dir / file.name)

    def load_weights(self, model: Transformer) -> None:
        if self.converted is not None:
            missing, unexpected = model.load_state_dict(checkpoint.with_tied_names(model, self.converted.weights),
                                                        strict=False)
            if missing or unexpected:
                raise CheckpointError(f"model.init {self.path}: weights do not fit ({sorted({*missing, *unexpected})[:3]})")
            return
        checkpoint.load_checkpoint_weights(model, checkpoint.inference_checkpoint(Path(self.path)))
        log.info("starting from %s (%s parameters)", self.path, f"{count_parameters(model):,}")


def initial_model(path: str) -> Initial:
    """The model model.init names: an nmt run directory (with its config.yaml), or a Hugging Face model
    directory (config.json) or hub:NAME, converted as `nmt import` converts it."""
    directory = Path(path)
    if (directory / CONFIG_FILE).is_file():
        return Initial(path, read_stored_config(directory / CONFIG_FILE))
    if path.startswith(HUB_PREFIX):
        hf = resolve(path)
    elif (directory / "config.json").is_file():
        hf = HFModel(directory, f"model.init {path}")
    else:
        raise DataError(f"model.init {path}: neither an nmt run directory ({CONFIG_FILE}) nor a Hugging Face model "
                        "directory (config.json)")
    converted = convert(hf)
    return Initial(path, config_of(converted, path, hf), converted)


def init_values(path: str) -> dict[str, dict[str, Any]]:
    """The model and tokenizer sections of model.init's model, as plain values (for `config.with_init`)."""
    values = to_dict(initial_model(path).config)
    return {"model": values["model"], "tokenizer": values["tokenizer"]}


