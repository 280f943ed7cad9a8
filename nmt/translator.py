"""A trained model ready to translate: a run directory loaded onto a device in a precision (quantized if
asked), and the translation of lines with it. Serving, export and pictures start here; nothing here
imports training.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml
from tqdm import tqdm

from nmt import checkpoint
from nmt.config import Config, DecodeConfig, from_dict, merge, validate
from nmt.decode import translate_ids
from nmt.errors import CheckpointError, ConfigError, DataError, NMTError
from nmt.model import Transformer
from nmt.precision import decoding_dtype, pack_linear_layers
from nmt.tokenizer import Tokenizer, load_tokenizer

CONFIG_FILE = "config.yaml"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NMTError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise NMTError(f"device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


def build_model(config: Config, tokenizer: Tokenizer) -> Transformer:
    if config.model.share_embeddings and not tokenizer.joint:
        raise ConfigError("model.share_embeddings needs a joint tokenizer; this run has separate vocabularies")
    return Transformer(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)


def read_stored_config(path: Path) -> Config:
    """The resolved config a run directory holds (written by `nmt train`)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(values.get("model"), dict):
            values["model"].setdefault("decoder_start", "bos")  # runs written before the key existed started from BOS
        return from_dict(values)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None


def translate_nbest(model: Transformer, tokenizer: Tokenizer, lines: Sequence[str], decode: DecodeConfig,
                     device: torch.device, show_progress: bool = False, workers: int = 1,
                     progress: Optional[Callable[[int], None]] = None) -> list[list[tuple[str, float]]]:
    """(text, score) hypotheses per line, best first; empty (or all-space) lines give one empty hypothesis.

    `progress`, when given, is told of each batch's sentences (instead of a progress bar of its own)."""
    return _nbest_of(model, [tokenizer] * len(lines), lines, decode, device, show_progress, workers, progress)


def _nbest_of(model: Transformer, tokenizers: Sequence[Tokenizer], lines: Sequence[str], decode: DecodeConfig,
              device: torch.device, show_progress: bool = False, workers: int = 1,
              progress: Optional[Callable[[int], None]] = None) -> list[list[tuple[str, float]]]:
    """`translate_nbest` with a tokenizer per line (a direction's tags each), all searched together: their
    outputs start alike (the same `tgt_prefix`), whatever the tags their sources start with."""
    tokenizer = tokenizers[0] if tokenizers else None
    if any(t.tgt_prefix != tokenizer.tgt_prefix for t in tokenizers):
        raise ValueError("lines searched together must share their forced target prefix")
    todo = [i for i, line in enumerate(lines) if line.strip()]
    ids: list[list[int]] = [[] for _ in todo]
    groups: dict[int, list[int]] = {}  # each tokenizer's lines (places in `todo`), encoded in one call
    for place, i in enumerate(todo):
        groups.setdefault(id(tokenizers[i]), []).append(place)
    for places in groups.values():
        own = tokenizers[todo[places[0]]]
        for place, row in zip(places, own.encode_src([lines[todo[p]].strip() for p in places])):
            ids[place] = row
    with tqdm(total=len(todo), desc="translate", unit="sent", disable=not show_progress or progress is not None,
              mininterval=1.0) as bar:
        hyps = translate_ids(model, ids, decode, device, progress=progress or bar.update, workers=workers,
                             prefix=tokenizer.tgt_prefix if tokenizer is not None else ())
    out: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
    for index, found in zip(todo, hyps):
        out[index] = list(zip(tokenizer.decode_tgt([h.tokens for h in found]), (h.score for h in found)))
    return out


def translate_texts(model: Transformer, tokenizer: Tokenizer, lines: Sequence[str], decode: DecodeConfig,
                     device: torch.device, show_progress: bool = False, workers: int = 1,
                     progress: Optional[Callable[[int], None]] = None) -> list[str]:
    """The best translation of each line; empty lines map to empty lines."""
    return [found[0][0] for found in translate_nbest(model, tokenizer, lines, decode, device, show_progress, workers,
                                                      progress)]


def _quantize_int8(model: Transformer) -> Transformer:
    """Dynamic int8 quantization of the linear layers, through torch's eager-mode quantization.

    torch has marked that API deprecated (in favour of the separate torchao package) but still
    ships it; its deprecation warnings are not the user's to act on, so they are kept off the
    terminal, and a torch without it gets a one-line error instead of an AttributeError.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise ConfigError(f"--quantize int8: torch {torch.__version__} no longer has dynamic int8 quantization "
                          "(torch.ao.quantization); translate in fp32 instead") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\bdeprecated\b", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz.*\bdeprecated\b", category=UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class Translator:
    """A trained model ready to translate: `Translator.load(model_dir).translate(lines)`."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: Config, device: torch.device) -> None:
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self._batch_keys: dict[tuple, tuple[int, ...]] = {}

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto", quantize: Optional[str] = None,
             precision: Optional[str] = None) -> "Translator":
        """Load a run directory for translation.

        precision ("auto", "fp32" or "bf16"; None: the run's decode.precision) is the dtype the model
        decodes in; auto is bf16 on CUDA and fp32 on a CPU, and beam scores are summed in fp32 either
        way; bf16 on a CPU packs the linear layers for oneDNN (see `PackedLinear`). quantize="int8"
        applies dynamic int8 quantization to the linear layers (CPU, fp32); quantize="bf16" is precision="bf16".
        """
        model_dir = Path(model_dir)
        config_path = model_dir / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{model_dir}: no {CONFIG_FILE}; is this a run directory made by `nmt train`?")
        config = read_stored_config(config_path)
        if quantize == "bf16":
            quantize, precision = None, "bf16"
        if precision is not None:  # checked as the config's value is
            config = merge({"decode": {"precision": precision}}, config)
            validate(config)
        precision = config.decode.precision
        tokenizer = load_tokenizer(model_dir, config.tokenizer.language_tags)
        torch_device = resolve_device(device)
        dtype = decoding_dtype(precision, torch_device)
        if quantize is not None and (quantize != "int8" or torch_device.type != "cpu"):
            raise ConfigError(f"--quantize {quantize!r}: int8 (on --device cpu) or bf16 are supported")
        if quantize is not None and dtype != torch.float32:
            raise ConfigError(f"--quantize {quantize} quantizes an fp32 model, not {precision}; use --precision fp32")
        with torch.device("meta"):  # no memory for weights that loading replaces: one copy of them in all
            model = build_model(config, tokenizer)
        checkpoint.load_checkpoint_weights(model, checkpoint.inference_checkpoint(model_dir), assign=True)
        model = model.to(torch_device, dtype).eval()
        # The Translator's settings name the dtype it decodes in (see `settings`).
        config = dataclasses.replace(config, decode=dataclasses.replace(
            config.decode, precision="bf16" if dtype == torch.bfloat16 else "fp32"))
        if quantize is not None:
            if model.output is None:  # the tied output projection is the largest matmul: quantize a copy of it too
                model.output = torch.nn.Linear(model.config.d_model, tokenizer.tgt_vocab_size, bias=False)
                model.output.weight = torch.nn.Parameter(model.tgt_embed.tokens.weight.detach().clone())
            model = _quantize_int8(model)
        return cls(pack_linear_layers(model), tokenizer, config, torch_device)

    def settings(self, beam: Optional[int] = None, decode: Optional[dict] = None) -> DecodeConfig:
        """The decode settings a call with these overrides uses: the model's stored ones with `decode`'s
        keys (converted and checked like a config's) and `beam`. Raises ConfigError for a bad one."""
        config = merge({"decode": {**(decode or {}), **({"beam": beam} if beam is not None else {})}}, self.config)
        validate(config)
        chosen, loaded = decoding_dtype(config.decode.precision, self.device), decoding_dtype(self.config.decode.precision, self.device)
        if chosen != loaded:  # the weights are cast once, when loaded
            raise ConfigError(f"decode.precision={config.decode.precision}: this model was loaded in "
                              f"{self.config.decode.precision}; load it with that precision (--precision)")
        return config.decode

    def tokenizer_for(self, src_lang: Optional[str] = None, tgt_lang: Optional[str] = None) -> Tokenizer:
        """The tokenizer with the language tags of `src_lang` -> `tgt_lang` (by default the run's data.src_lang and
        data.tgt_lang), for a model with language tags; a language the model has no tag for is an error."""
        data = self.config.data
        if data.pairs:  # a multilingual model of ours: the target's tag is the source's first piece
            if not tgt_lang:
                raise DataError(f"no target language given: this model translates {', '.join(data.pairs)} "
                                "(--tgt-lang, or the server's target)")
            return self.tokenizer.for_languages(src_lang or "", tgt_lang)
        return self.tokenizer.for_languages(src_lang or data.src_lang, tgt_lang or data.tgt_lang)

    def translate(self, lines: Sequence[str], beam: Optional[int] = None, show_progress: bool = False,
                  workers: int = 1, progress: Optional[Callable[[int], None]] = None, src_lang: Optional[str] = None,
                  tgt_lang: Optional[str] = None, **decode) -> list[str]:
        """Translate lines; `beam` and other DecodeConfig fields override the model's stored decode settings.

        `workers` > 1 decodes in that many CPU processes of one thread each (see `translate_ids`).
        `progress(n)` is called as batches of n sentences are done (e.g. a progress bar's update).
        `src_lang` and `tgt_lang` choose the language tags of a model that has them (`tokenizer_for`).
        """
        settings = self.settings(beam, decode)
        return translate_texts(self.model, self.tokenizer_for(src_lang, tgt_lang), lines, settings, self.device,
                               show_progress, workers, progress)

    def translate_nbest(self, lines: Sequence[str], nbest: int, beam: Optional[int] = None,
                        show_progress: bool = False, workers: int = 1, progress: Optional[Callable[[int], None]] = None,
                        src_lang: Optional[str] = None, tgt_lang: Optional[str] = None,
                        **decode) -> list[list[tuple[str, float]]]:
        """The `nbest` best (text, score) pairs per line; score is log-probability / length**length_penalty."""
        settings = self.settings(beam, {**decode, "nbest": nbest})
        return translate_nbest(self.model, self.tokenizer_for(src_lang, tgt_lang), lines, settings, self.device,
                               show_progress, workers, progress)

    def batch_key(self, src_lang: Optional[str] = None, tgt_lang: Optional[str] = None) -> tuple[int, ...]:
        """What lines searched together must share: the forced start of their outputs. Directions of a model
        whose target tag is in the source (OPUS-MT's, nmt's multilingual models) all share one."""
        key = self._batch_keys.get((src_lang, tgt_lang))
        if key is None:
            key = self._batch_keys[(src_lang, tgt_lang)] = self.tokenizer_for(src_lang, tgt_lang).tgt_prefix
        return key

    def translate_mixed(self, lines: Sequence[str], languages: Sequence[tuple[Optional[str], Optional[str]]],
                        nbest: int, beam: Optional[int] = None, **decode) -> list[list[tuple[str, float]]]:
        """`translate_nbest` of lines of several directions ((source, target) each) in one search, for
        directions with the same `batch_key`: what each line gives alone, in one batch (the server's)."""
        settings = self.settings(beam, {**decode, "nbest": nbest})
        tokenizers = {pair: self.tokenizer_for(*pair) for pair in dict.fromkeys(languages)}
        return _nbest_of(self.model, [tokenizers[pair] for pair in languages], lines, settings, self.device)
