"""The one typed configuration: defaults -> YAML file -> dotted `--set` overrides, validated."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml

from nmt import atomic
from nmt.directions import pair_rules
from nmt.errors import ConfigError


MEAN = "mean"  # train.best_on: the mean of every validation set's BLEU
Precision = Literal["auto", "fp32", "bf16"]  # what each means on each device: nmt.precision


@dataclass(frozen=True)
class TrainCorpus:
    """One training corpus, and how many times it is seen per epoch relative to the others."""

    path: str  # file prefix (PREFIX.src/.tgt), .tsv, .jsonl, saved dataset dir or hub:NAME
    weight: float = 1.0  # 2: twice per epoch; 0.5: a different half each epoch


@dataclass(frozen=True)
class ValidCorpus:
    """One validation set, and the name its scores are logged under."""

    path: str  # in the same forms as a training corpus
    name: str = "valid"  # the name in metrics.jsonl, the plots and train.best_on


@dataclass(frozen=True)
class DataConfig:
    src_lang: str = "en"  # source language code: file suffix, column or translation key
    tgt_lang: str = "de"  # target language code
    pairs: tuple[str, ...] = ()  # directions of one multilingual model, e.g. [en-de, de-en, en-fr]: each data.train and data.valid corpus is read for each (PREFIX.en and PREFIX.de for en-de; {src} and {tgt} in a path name the pair's languages) and the target's tag >>de<< starts the source (tokenizer.language_tags: target_in_source); empty: the one pair data.src_lang-data.tgt_lang
    temperature: float = 1.0  # how directions share an epoch: a direction of n of all N pairs gets (n/N)^(1/T), normalised; 1: in proportion to size, 5: the multilingual papers' choice, inf: uniform
    train: tuple[TrainCorpus, ...] = ()  # training corpus (file prefix PREFIX.src/.tgt, .tsv, .jsonl, saved dataset dir or hub:NAME), or a list of them, each a path or {path: P, weight: W}
    valid: tuple[ValidCorpus, ...] = ()  # validation corpus in the same forms, or a list of named sets, each {name: N, path: P} (e.g. in-domain and general); empty disables validation
    train_split: str = "train"  # split name when the corpus is a dataset (on disk or hub)
    valid_split: str = "validation"  # split name of the validation corpus when it is a dataset
    hub_config: str = ""  # dataset configuration name for hub datasets that have several
    max_tokens_per_side: int = 128  # drop training pairs whose either side is longer (subword tokens)
    max_length_ratio: float = 3.0  # drop pairs whose token-length ratio exceeds this
    dedup: bool = True  # drop exact duplicate pairs from the training corpus
    cache_dir: str = ""  # prepared-data cache; empty means $NMT_CACHE or ~/.cache/nmt
    workers: int = 0  # processes that tokenize the training corpora; 0: one per CPU core

    # Keys a resumed run may change (see `resumable_keys`).
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"valid", "valid_split", "cache_dir", "workers"})


@dataclass(frozen=True)
class TokenizerConfig:
    model: str = ""  # existing SentencePiece model (joint) to use; empty trains one into the run dir
    src_model: str = ""  # existing source model when vocabularies are separate
    tgt_model: str = ""  # existing target model when vocabularies are separate
    joint: bool = True  # one vocabulary for both languages (enables shared embeddings)
    type: Literal["unigram", "bpe"] = "unigram"  # SentencePiece model type: unigram or bpe
    vocab_size: int = 8000  # pieces per vocabulary, special tokens included
    character_coverage: float = 1.0  # share of characters covered; lower (0.9995) for CJK scripts
    language_tags: Literal["none", "target_in_source", "source_and_forced_target"] = "none"  # language tags: none; target_in_source (the target language's tag starts the source, as OPUS-MT's >>deu<<); source_and_forced_target (the source's tag starts the source and the target's is the first output, as M2M100 and NLLB)
    input_sentence_size: int = 300_000  # sentences sampled for training the tokenizer; SentencePiece takes ~0.9 GB for 300,000 of ~135 characters


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256),
    "small": dict(d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024),
    "base": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048),
    "big": dict(d_model=1024, n_heads=16, n_encoder_layers=6, n_decoder_layers=6, d_ff=4096),
}


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "base"  # tiny, small, base or big; explicit keys in the same file override it
    d_model: int = 512  # width of embeddings and hidden states
    n_heads: int = 8  # attention heads; must divide d_model
    n_encoder_layers: int = 6  # encoder layers
    n_decoder_layers: int = 6  # decoder layers
    d_ff: int = 2048  # inner width of the feed-forward sub-layer
    dropout: float = 0.1  # dropout on embeddings and sub-layer outputs
    attention_dropout: float = 0.0  # dropout on attention weights
    activation_dropout: float = 0.0  # dropout after the feed-forward activation
    activation: Literal["relu", "gelu", "swish"] = "relu"  # feed-forward activation: relu, gelu or swish (SiLU, as most OPUS-MT models)
    norm_first: bool = True  # LayerNorm before each sub-layer (pre-norm) or after it (post-norm)
    positions: Literal["sinusoidal", "learned", "sinusoidal_fairseq"] = "sinusoidal"  # position encoding: sinusoidal (Vaswani, as MarianMT), learned, or sinusoidal_fairseq (M2M100 and NLLB: fairseq's frequencies, positions from 2)
    max_positions: int = 512  # longest sequence the position table covers
    share_embeddings: bool = True  # tie source, target and output embeddings (needs a joint vocabulary)
    tie_output: bool = False  # with separate source and target embeddings, tie the output projection to the target embedding (MarianMT with separate vocabularies)
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model)
    output_bias: bool = False  # a trained bias on the output projection (MarianMT's final_logits_bias)
    pad_in_softmax: bool = False  # padding's logit counts in the softmax, as in models trained elsewhere (never produced either way); false: it is -inf, no class at all
    decoder_start: Literal["pad", "bos", "eos"] = "pad"  # first decoder input: pad (a zero vector, as Marian and CTranslate2 start), bos, or eos (as M2M100 and NLLB)
    init: str = ""  # start training from this model's weights, architecture and tokenizer: an nmt run directory, a Hugging Face model directory or hub:NAME (see `nmt import`)
    imported_from: str = ""  # where `nmt import` read this model (a Hugging Face directory or hub:NAME); empty for a model nmt trained

    # What a model's weights need: taken from model.init when fine-tuning (see `architecture_keys`).
    NOT_ARCHITECTURE: ClassVar[frozenset[str]] = frozenset({"preset", "dropout", "attention_dropout",
                                                            "activation_dropout", "init", "imported_from"})


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1  # seed for initialisation, dropout and batch order
    max_tokens: int = 4096  # token budget of one batch (padded source + target tokens)
    accum_steps: int = 1  # batches whose gradients are summed before one update
    lr: float = 7e-4  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 4000  # linear warmup, then inverse-square-root decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    weight_decay: float = 0.0001  # AdamW weight decay
    label_smoothing: float = 0.1  # label smoothing of the cross-entropy
    clip_norm: float = 1.0  # clip the gradient norm to this; 0 disables clipping
    max_steps: int = 100_000  # stop after this many updates
    max_epochs: int = 0  # stop after this many epochs; 0 means no bound
    max_minutes: float = 0.0  # stop after this many minutes of training in this invocation (checked every log_every updates); 0: no bound
    valid_every: int = 1000  # validate (loss and BLEU) every this many updates
    valid_bleu_sentences: int = 0  # sentences of the validation set decoded for BLEU; 0 means all
    valid_bleu_seconds: float = 0.0  # bound on BLEU decoding: the first validation decodes for about this long, later ones the same sentences; 0: no bound
    patience: int = 0  # stop after this many validations without a BLEU gain; 0 disables early stopping
    best_on: str = ""  # the validation set (data.valid's name, or with data.pairs a direction: en-de) that early stopping and the best checkpoint go by, or mean (of every set's BLEU); empty: the first, or with data.pairs the mean
    save_every: int = 1000  # write a checkpoint every this many updates
    keep_last: int = 5  # step checkpoints kept on disk
    log_every: int = 100  # write training metrics every this many updates
    max_nonfinite: int = 5  # stop after this many updates in a row with a non-finite loss or gradient
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto, cpu or cuda
    precision: Precision = "auto"  # auto (bf16 autocast on CUDA and on CPUs with AMX, else fp32), fp32 or bf16
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model (dynamic shapes, one graph): true, false, or auto (on CUDA only, where it pays)
    loader_workers: int = -1  # processes that collate batches ahead of the step; -1: 2 on CUDA (pinned memory), 0 on CPU
    ema_decay: float = 0.0  # keep an exponential moving average of the weights (e.g. 0.9995); 0 disables
    freeze: tuple[Literal["embeddings", "encoder", "decoder"], ...] = ()  # parts left as they are, e.g. [embeddings, encoder] when fine-tuning on little data; embeddings include the tied output projection

    RESUMABLE: ClassVar[frozenset[str]] = frozenset({
        "max_steps", "max_epochs", "max_minutes", "valid_every", "valid_bleu_sentences", "valid_bleu_seconds",
        "patience", "save_every", "keep_last", "log_every", "device", "precision", "threads", "compile",
        "loader_workers", "max_nonfinite", "best_on"})


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 5  # beam size; 1 is greedy search
    length_penalty: float = 1.0  # hypothesis score is log-probability / length**length_penalty
    max_len_a: float = 1.5  # output length limit is max_len_a * source_length + max_len_b
    max_len_b: int = 10  # see max_len_a
    max_tokens: int = 0  # budget of one decoding batch, source tokens x beam; 0: 6,000 on CPU, 60,000 on CUDA
    precision: Precision = "auto"  # auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16: the model's dtype when decoding; scores are summed in fp32
    nbest: int = 1  # hypotheses returned per sentence

    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"beam", "length_penalty", "max_len_a", "max_len_b", "max_tokens",
                                                    "nbest", "precision"})


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def _corpora(key: str, value: Any, kind: type) -> tuple:
    """Corpora (`kind`: TrainCorpus or ValidCorpus) from a path, a list of paths and mappings of the kind's
    fields ({path, weight}, {path, name}), or their YAML text."""
    if isinstance(value, str):
        if not value.strip().startswith("["):
            return (kind(value),) if value.strip() else ()
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: not a valid YAML list: {value!r}") from None
    if isinstance(value, (dict, kind)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a corpus path or a list of corpora, got {value!r}")
    types_by_name = _field_types(kind)
    shape = ", ".join(f"{name}: {name[0].upper()}" for name in types_by_name)
    corpora = []
    for item in value:
        if isinstance(item, kind):
            corpora.append(item)
            continue
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise ConfigError(f"{key}: each corpus is a path or {{{shape}}}, got {item!r}")
        for name in item:
            if name not in types_by_name:
                raise _unknown_key(f"{key}.{name}", list(types_by_name))
        corpora.append(kind(**{name: _convert(f"{key}.{name}", item[name], types_by_name[name])
                               for name in types_by_name if name in item}))
    return tuple(corpora)


def _convert(key: str, value: Any, annotation: Any) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is tuple and typing.get_args(annotation) in ((TrainCorpus, ...), (ValidCorpus, ...)):
        return _corpora(key, value, typing.get_args(annotation)[0])
    if origin is tuple and len(typing.get_args(annotation)) == 2 and typing.get_args(annotation)[1] is Ellipsis:
        if isinstance(value, str):  # "encoder,embeddings" or a YAML list
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(key, v, typing.get_args(annotation)[0]) for v in value)
    if origin is Literal:  # a string here; whether it is one of the choices is `validate`'s to say
        return _convert(key, value, str)
    if origin in (typing.Union, types.UnionType):  # the first member type the value converts to
        members = typing.get_args(annotation)
        if isinstance(value, str) and any(typing.get_origin(m) is Literal and value in typing.get_args(m) for m in members):
            return value  # a choice spelled out ("auto"), before YAML would read it as another type
        for member in members:
            try:
                return _convert(key, value, member)
            except ConfigError:
                pass
        if all(m is bool or typing.get_origin(m) is Literal for m in members):
            raise ConfigError(f"{key} must be {_choices(annotation)}, got {value!r}", key=key)
        names = " or ".join(getattr(member, "__name__", str(member)) for member in members)
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ConfigError(f"{key}: expected {len(item_types)} values, got {value!r}")
        return tuple(_convert(key, v, t) for v, t in zip(value, item_types))
    if isinstance(value, str) and annotation is not str:
        value = yaml.safe_load(value) if value.strip() else value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, str):  # YAML reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    type_name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {type_name}, got {value!r}")


def _allowed(annotation: Any) -> Optional[tuple]:
    """The values a field may take when its type lists them (Literal choices, bool), else None."""
    if annotation is bool:
        return (True, False)
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [_allowed(member) for member in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else tuple(v for p in parts for v in p)
    return None


def choices(section: type, key: str) -> tuple:
    """The values config key `key` of `section` (a section's class, e.g. DecodeConfig) may take."""
    allowed = _allowed(_field_types(section)[key])
    if allowed is None:
        raise KeyError(key)
    return allowed


def _choices(annotation: Any) -> str:
    """The allowed values as prose: "auto, fp32 or bf16"."""
    words = [str(v).lower() if isinstance(v, bool) else str(v) for v in _allowed(annotation) or ()]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def _field_types(section: type) -> dict[str, Any]:
    """Each field of a config section and its type (ClassVars such as RESUMABLE are not fields)."""
    hints = typing.get_type_hints(section)  # resolves the postponed annotations
    return {f.name: hints[f.name] for f in fields(section)}


def resumable_keys() -> dict[str, frozenset[str]]:
    """Per section, the keys a resumed run may change: bounds, bookkeeping, where it runs, how it decodes
    (each section's RESUMABLE). Any other difference from a run's stored config means another
    experiment, which belongs in another run directory."""
    return {name: getattr(section, "RESUMABLE", frozenset()) for name, section in _section_types().items()}


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def merge(values: dict[str, dict[str, Any]], base: Config | None = None) -> Config:
    """Apply nested `values` ({section: {key: value}}) on top of `base`, converting types."""
    base = base or Config()
    sections = _section_types()
    updated: dict[str, Any] = {}
    for section, entries in values.items():
        if section not in sections:
            raise _unknown_key(section, list(sections))
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {entries!r}")
        current = getattr(base, section)
        types_by_name = _field_types(type(current))
        changes = {}
        for key, value in entries.items():
            if key not in types_by_name:
                raise _unknown_key(f"{section}.{key}", list(types_by_name))
            changes[key] = _convert(f"{section}.{key}", value, types_by_name[key])
        if section == "model" and "preset" in changes:
            preset = changes["preset"]
            if preset not in PRESETS:
                raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
            changes = {**PRESETS[preset], **changes}  # explicit keys beat the preset
        updated[section] = replace(current, **changes)
    return replace(base, **updated)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Turn ["train.lr=5e-4", ...] into {"train": {"lr": "5e-4"}}; values are converted later."""
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=5e-4")
        nested.setdefault(section, {})[name] = value
    return nested


def decode_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["decode.length_penalty=0.6", ...] into {"length_penalty": "0.6"} for translate and eval,
    which take keys of the decode section only; values are converted when they are applied."""
    nested = parse_overrides(overrides)
    others = [f"{section}.{key}" for section, entries in nested.items() if section != "decode" for key in entries]
    if others:
        raise ConfigError(f"--set {others[0]}: only decode.* settings apply when translating "
                          f"(e.g. decode.length_penalty=0.6)")
    return nested.get("decode", {})


def _read_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, tokenizer, model, train, decode")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build the config from defaults, an optional YAML file and `--set` overrides, then validate it."""
    config = merge(_read_file(path))
    # Overrides go on top; a preset named there applies before the keys beside it.
    config = merge(parse_overrides(overrides or []), config)
    validate(config)
    return config


def given_keys(path: str | Path | None = None, overrides: list[str] | None = None) -> frozenset[str]:
    """The keys ("model.d_model") that a config file and `--set` overrides give explicitly."""
    keys = {f"{section}.{key}" for source in (_read_file(path), parse_overrides(overrides or []))
            for section, entries in source.items() if isinstance(entries, dict) for key in entries}
    return frozenset(keys)


def with_init(config: Config, initial: dict[str, dict[str, Any]], given: frozenset[str] = frozenset()) -> Config:
    """`config` with the architecture and tokenizer of the model it starts from (model.init), whose model and
    tokenizer sections `initial` holds: a fine-tuned model is its initial model with other weights.
    A key of those sections that `given` names (set by the user) with another value is a ConfigError
    naming it; the dropouts, which are not architecture, stay the user's where given."""
    if "model.preset" in given:
        raise ConfigError(f"model.preset: with model.init ({config.model.init}) the architecture is the initial "
                          "model's; drop model.preset", key="model.preset")
    values = to_dict(config)
    taken: dict[str, dict[str, Any]] = {"model": {}, "tokenizer": {}}
    for section in taken:
        for key, value in initial[section].items():
            if section == "model" and key in ("preset", "init", "imported_from"):
                continue
            name = f"{section}.{key}"
            if name in given and values[section][key] != value:
                if section == "model" and key in ModelConfig.NOT_ARCHITECTURE:
                    continue  # a dropout of the user's own
                raise ConfigError(f"{name}={values[section][key]!r} contradicts model.init {config.model.init}, whose "
                                  f"{name} is {value!r}; drop it (a fine-tuned model keeps its initial model's "
                                  "architecture and tokenizer)", key=name)
            taken[section][key] = value
    result = merge(taken, config)
    validate(result)
    return result


def validate(config: Config) -> None:
    """Check ranges and cross-field rules; raise ConfigError naming the key."""
    m, t, d, k = config.model, config.train, config.decode, config.tokenizer
    rules = [
        (m.d_model > 0 and m.n_heads > 0 and m.d_model % m.n_heads == 0,
         f"model.d_model ({m.d_model}) must be a positive multiple of model.n_heads ({m.n_heads})"),
        (m.positions == "learned" or m.d_model % 2 == 0, f"model.d_model ({m.d_model}) must be even for sinusoidal positions"),
        (m.n_encoder_layers >= 1 and m.n_decoder_layers >= 1, "model.n_encoder_layers and model.n_decoder_layers must be >= 1"),
        (m.d_ff > 0, f"model.d_ff must be > 0, got {m.d_ff}"),
        (all(0 <= p < 1 for p in (m.dropout, m.attention_dropout, m.activation_dropout)), "model dropout values must be in [0, 1)"),
        (not m.share_embeddings or k.joint, "model.share_embeddings needs tokenizer.joint: true (set model.share_embeddings=false)"),
        (k.vocab_size >= 16, f"tokenizer.vocab_size must be >= 16, got {k.vocab_size}"),
        (0 < k.character_coverage <= 1, f"tokenizer.character_coverage must be in (0, 1], got {k.character_coverage}"),
        (t.max_tokens > 0, f"train.max_tokens must be > 0, got {t.max_tokens}"),
        (t.accum_steps >= 1, f"train.accum_steps must be >= 1, got {t.accum_steps}"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}"),
        (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.max_steps > 0, f"train.max_steps must be > 0, got {t.max_steps}"),
        (t.valid_every > 0 and t.save_every > 0 and t.log_every > 0, "train.valid_every, save_every and log_every must be > 0"),
        (t.keep_last >= 1, f"train.keep_last must be >= 1, got {t.keep_last}"),
        (t.valid_bleu_seconds >= 0, f"train.valid_bleu_seconds must be >= 0, got {t.valid_bleu_seconds}"),
        (t.max_nonfinite >= 1, f"train.max_nonfinite must be >= 1, got {t.max_nonfinite}"),
        (t.loader_workers >= -1, f"train.loader_workers must be >= -1, got {t.loader_workers}"),
        (0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}"),
        (d.beam >= 1, f"decode.beam must be >= 1, got {d.beam}"),
        (1 <= d.nbest <= d.beam, f"decode.nbest must be between 1 and decode.beam ({d.beam}), got {d.nbest}"),
        (d.max_len_a >= 0 and d.max_len_b >= 1, "decode.max_len_a must be >= 0 and decode.max_len_b >= 1"),
        (d.max_tokens >= 0, f"decode.max_tokens must be >= 0 (0: chosen for the device), got {d.max_tokens}"),
        *pair_rules(config.data, config.tokenizer),
        (config.data.max_tokens_per_side >= 1, "data.max_tokens_per_side must be >= 1"),
        (config.data.workers >= 0, f"data.workers must be >= 0, got {config.data.workers}"),
        (all(c.path.strip() for c in config.data.train), "data.train: a corpus path is empty"),
        (all(c.weight > 0 for c in config.data.train),
         f"data.train: weights must be > 0, got {[c.weight for c in config.data.train]}"),
        (len({v.name for v in config.data.valid}) == len(config.data.valid),
         f"data.valid: each set needs a name of its own, got {[v.name for v in config.data.valid]}"),
        (not t.best_on or t.best_on == MEAN or bool(config.data.pairs) or t.best_on in {v.name for v in config.data.valid},
         f"train.best_on: {t.best_on!r} is not a data.valid set's name ({', '.join(v.name for v in config.data.valid) or 'none'}) or mean"),
        (all(v.path.strip() for v in config.data.valid), "data.valid: a corpus path is empty"),
        (config.data.max_tokens_per_side + 2 <= m.max_positions,
         f"data.max_tokens_per_side ({config.data.max_tokens_per_side}) + 2 must fit model.max_positions ({m.max_positions})"),
    ]
    for name, section in _section_types().items():  # every value a field's type lists choices for
        for key, annotation in _field_types(section).items():
            allowed, value = _allowed(annotation), getattr(getattr(config, name), key)
            items = typing.get_args(annotation)
            if typing.get_origin(annotation) is tuple and len(items) == 2 and items[1] is Ellipsis and _allowed(items[0]):
                for item in value:
                    if item not in _allowed(items[0]):
                        raise ConfigError(f"{name}.{key}: each must be {_choices(items[0])}, got {item!r}",
                                          key=f"{name}.{key}")
            if allowed is not None and annotation is not bool and not any(value is v or (value == v and type(value) is type(v))
                                                                          for v in allowed):
                raise ConfigError(f"{name}.{key} must be {_choices(annotation)}, got {value!r}", key=f"{name}.{key}")
    for ok, message in rules:
        if not ok:
            named = re.match(r"(\w+\.\w+)", message)
            raise ConfigError(message, key=named.group(1) if named else None)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as plain nested data (tuples as lists) for YAML and checkpoints."""
    values = {s: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(config, s)).items()}
              for s in _section_types()}  # tuples as lists
    corpora = values["data"]["train"]  # one corpus of weight 1 is written as its path, as configs have it
    if not corpora or (len(corpora) == 1 and corpora[0]["weight"] == 1.0):
        values["data"]["train"] = corpora[0]["path"] if corpora else ""
    valid = values["data"]["valid"]  # so is one validation set of the default name
    if not valid or (len(valid) == 1 and valid[0]["name"] == ValidCorpus.name):
        values["data"]["valid"] = valid[0]["path"] if valid else ""
    return values


def _key_notes(section: type) -> dict[str, str]:
    """The comment after each field of a config section, from this module's source (empty if unavailable)."""
    try:
        source = inspect.getsource(section)
    except (OSError, TypeError):  # installed without sources
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^\n#]*#([^\n]*)$", source, re.M)}


def describe(config: Config, header: str = "every key with its value and meaning") -> str:
    """The config as YAML with each key's meaning as a comment: what `nmt config` prints and run dirs keep."""
    lines = [f"# nmt config: {header}"]
    values = to_dict(config)
    for name, section in _section_types().items():
        notes = _key_notes(section)
        lines.append(f"{name}:")
        for key, value in values[name].items():
            flow = yaml.safe_dump([value], default_flow_style=True, width=1_000_000).strip()[1:-1]  # "[v]" -> "v"
            lines.append(f"  {key}: {flow}  # {notes[key]}" if notes.get(key) else f"  {key}: {flow}")
    return "\n".join(lines) + "\n"


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as commented YAML (atomically)."""
    atomic.write_text(Path(path), describe(config, "the resolved config of this run"))


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved by `save_config` (presets are already expanded there)."""
    config = merge(values)  # every key is explicit there, so they all beat the preset
    validate(config)
    return config
