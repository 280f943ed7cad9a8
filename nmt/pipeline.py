"""The training jobs the CLI calls: train (or resume) a run, and keep the best of its averaged checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from nmt import checkpoint, distributed
from nmt.config import MEAN, Config, DataConfig, resumable_keys, save_config, to_dict, with_init
from nmt.directions import directions, for_direction, target_languages
from nmt.data import Preparation, TrainingData, cache_root, read_corpus
from nmt.errors import CheckpointError, ConfigError
from nmt.evaluate import bleu, evaluate_model
from nmt.model import Transformer, count_parameters
from nmt.precision import decoding_model, trains_in_bf16
from nmt.importing.run import Initial, initial_model
from nmt.tokenizer import Tokenizer, load_tokenizer, prepare_tokenizer_from_sample, tag_piece
from nmt.train import Trainer, ValidSet
from nmt.translator import CONFIG_FILE, build_model, read_stored_config, resolve_device, translate_texts

log = logging.getLogger(__name__)


def _check_resume_config(run_dir: Path, config: Config) -> None:
    """Refuse to resume a run whose stored config differs in a key that is not safe to change."""
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.is_file():
        raise CheckpointError(f"{stored_path}: missing, but {run_dir} holds checkpoints; restore it or use a new --run-dir")
    stored = to_dict(read_stored_config(stored_path))
    new, safe = to_dict(config), resumable_keys()
    for section, values in new.items():
        for key, value in values.items():
            if value != stored[section][key] and key not in safe[section]:
                raise ConfigError(f"{run_dir} holds a run with {section}.{key}={stored[section][key]!r}, not {value!r}; "
                                  f"resuming may change only bounds, logging, device and decode keys "
                                  f"(e.g. train.max_steps); use a new --run-dir for a different experiment")


def _prepare_data(config: Config, run_dir: Path, resuming: bool, initial: Optional[Initial] = None
                  ) -> tuple[Tokenizer, TrainingData, list[tuple[str, list[str], list[str], Tokenizer]]]:
    """The tokenizer and the training corpora as token stores (streamed and cached: see nmt.data.prepare);
    returns the validation sets' names and texts too. A new run trains the tokenizer on a sample of the
    corpora, unless one was trained on the same corpora with the same settings before, or takes the
    initial model's (model.init); a resumed run keeps its own. A tokenizer with language tags is
    returned with data.src_lang's and data.tgt_lang's; with data.pairs, without any (each direction's
    validation set comes with its own), and a new one has a tag for each target language."""
    d, t = config.data, config.tokenizer
    pairs = directions(d)
    with Preparation(d, d.workers, quiet=not distributed.is_main()) as preparation:
        valid = [(_valid_name(v.name, s, tgt, d), s, tgt,
                  *read_corpus(for_direction(v.path, s, tgt), s, tgt, d.valid_split, d.hub_config))
                 for v in d.valid for s, tgt in pairs]
        if resuming or not distributed.is_main():
            tokenizer = load_tokenizer(run_dir, t.language_tags)
        elif initial is not None:
            initial.write_tokenizer(run_dir)
            tokenizer = load_tokenizer(run_dir, t.language_tags)
        else:
            settings = json.dumps([preparation.key, to_dict(config)["tokenizer"], config.train.seed,
                                   importlib.metadata.version("sentencepiece")])
            cache = cache_root(d) / "tokenizers" / hashlib.sha256(settings.encode()).hexdigest()[:24]
            tokenizer = prepare_tokenizer_from_sample(
                t, run_dir, lambda: preparation.sample(t.input_sentence_size, config.train.seed, t.joint),
                config.train.seed, cache, [tag_piece(code) for code in target_languages(d)])
        if not d.pairs:
            tokenizer = tokenizer.for_languages(d.src_lang, d.tgt_lang)
        data = preparation.finish(tokenizer)
    return tokenizer, data, [(name, src, tgt, tokenizer.for_languages(s, tg) if d.pairs else tokenizer)
                             for name, s, tg, src, tgt in valid]


def _valid_name(name: str, src_lang: str, tgt_lang: str, config: DataConfig) -> str:
    """A validation set's name in metrics.jsonl: data.valid's, or with data.pairs the direction's ("en-de"),
    after the set's own name where there are several ("news/en-de")."""
    if not config.pairs:
        return name
    return f"{src_lang}-{tgt_lang}" if len(config.valid) == 1 else f"{name}/{src_lang}-{tgt_lang}"


def train(config: Config, run_dir: Path, given: frozenset[str] = frozenset()) -> dict:
    """Train (or resume) the run in `run_dir` and return a summary; works unchanged under torchrun.

    With model.init the run starts from that model (see `with_init`; `given`: the config keys the
    user set, of which none may contradict the initial model's architecture or tokenizer)."""
    if not config.data.train:
        raise ConfigError("data.train is empty: name a corpus (file prefix, .tsv, .jsonl, dataset dir or hub:NAME)")
    device = distributed.setup(resolve_device(config.train.device))
    try:
        return _train(config, run_dir, device, given)
    finally:
        distributed.teardown()


def _refuse_imported(run_dir: Path) -> None:
    stored = run_dir / CONFIG_FILE
    if stored.is_file() and read_stored_config(stored).model.imported_from:
        raise ConfigError(f"{run_dir} holds an imported model; fine-tune it into a new run directory: "
                          f"--set model.init={run_dir} --run-dir NEW")


def _train(config: Config, run_dir: Path, device: torch.device, given: frozenset[str]) -> dict:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    latest = checkpoint.latest_checkpoint(run_dir) if run_dir.is_dir() else None
    initial = None
    if config.model.init:
        if latest is not None:  # the run's own config holds the architecture; the initial model may be gone
            config = with_init(config, to_dict(read_stored_config(run_dir / CONFIG_FILE)), given)
        else:
            initial = initial_model(config.model.init)
            config = with_init(config, to_dict(initial.config), given)
    if latest is None:
        _refuse_imported(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if latest is not None:
        _check_resume_config(run_dir, config)
    # Under torchrun, rank 0 trains the tokenizer and prepares the corpora; the other ranks wait for it (as
    # long as that takes), then load the tokenizer and map the same cached token stores.
    if distributed.is_main():
        checkpoint.forget_average(run_dir)
    with distributed.main_first("data"):
        tokenizer, corpus, valid_texts = _prepare_data(config, run_dir, latest is not None, initial)
        if distributed.is_main():
            save_config(config, run_dir / CONFIG_FILE)
    torch.manual_seed(config.train.seed)
    model = build_model(config, tokenizer)
    if initial is not None:
        initial.load_weights(model)
    log.info("model: %s parameters", f"{count_parameters(model):,}")
    if distributed.world_size() > 1:
        torch.manual_seed(config.train.seed + distributed.rank())  # same initial weights, different dropout masks
    valid = []
    for name, valid_src, valid_tgt, own in valid_texts:
        pairs = [(s.strip(), t.strip()) for s, t in zip(valid_src, valid_tgt) if s.strip() and t.strip()]
        limit = config.train.valid_bleu_sentences or len(pairs)
        valid.append(ValidSet(own.encode_src([s for s, _ in pairs]), own.encode_tgt([t for _, t in pairs]),
                              name, _validation_bleu(config, own, device, [s for s, _ in pairs[:limit]],
                                                     [t for _, t in pairs[:limit]])))
    # With several directions, early stopping and the best checkpoint go by their mean BLEU unless told otherwise.
    train_config = config.train
    if config.data.pairs and not train_config.best_on and len(valid) > 1:
        train_config = dataclasses.replace(train_config, best_on=MEAN)
    trainer = Trainer(model, train_config, run_dir, corpus, valid, None, device)
    if latest is not None:
        trainer.resume(latest)
    reason = trainer.train()
    p = trainer.progress
    return {"run_dir": str(run_dir), "step": p.step, "epoch": p.epoch, "best_valid_bleu": p.best_bleu,
            "train_minutes": round(p.train_seconds / 60, 2), "stopped": reason, "rank": distributed.rank()}


# Validation sentences decoded at a time when train.valid_bleu_seconds bounds the decoding.
VALID_CHUNK = 128


def _validation_bleu(config: Config, tokenizer: Tokenizer, device: torch.device, src: list[str],
                     ref: list[str]) -> Callable[[Transformer], float]:
    """The validation BLEU of a model being trained, decoded in the training precision: bf16 where
    training autocasts to it (a bf16 copy of the weights, as `nmt translate --precision bf16` decodes).

    With train.valid_bleu_seconds, the first validation decodes the sentences in order, VALID_CHUNK
    at a time, until that time is spent, and later ones decode the same sentences, so that their
    scores compare (and take less time: a model early in training writes longer outputs). A resumed
    run measures again.
    """
    t = config.train
    decode = dataclasses.replace(config.decode, precision="bf16" if trains_in_bf16(t.precision, device) else "fp32")
    chosen = [0 if t.valid_bleu_seconds else len(src)]  # sentences decoded; 0: not measured yet

    def valid_bleu(model: Transformer) -> float:
        model = decoding_model(model, decode.precision, device)  # once per validation, not per chunk
        if chosen[0]:
            return bleu(translate_texts(model, tokenizer, src[:chosen[0]], decode, device), ref[:chosen[0]])
        hyps, start = [], time.perf_counter()
        while len(hyps) < len(src) and (not hyps or time.perf_counter() - start < t.valid_bleu_seconds):
            hyps += translate_texts(model, tokenizer, src[len(hyps):len(hyps) + VALID_CHUNK], decode, device)
        chosen[0] = len(hyps)
        if len(hyps) < len(src):
            log.info("validation BLEU on the first %d of %d sentences (train.valid_bleu_seconds=%g)",
                     len(hyps), len(src), t.valid_bleu_seconds)
        return bleu(hyps, ref[:len(hyps)])
    return valid_bleu


def select_average(model_dir: Path, lasts: Sequence[int], src_path: Path, ref_path: Path,
                   device: str = "auto") -> dict:
    """Keep whichever scores best on a validation set: the model without averaging, an average of the
    last N, or the moving average of the weights when training kept one (train.ema_decay).

    Returns {"bleu": {"none": ..., "ema": ..., "last4": ...}, "chosen": name}; translate and eval then use the choice.
    Choose on validation data only, never on a test set.
    """
    checkpoint.forget_average(model_dir)
    found = {"none": evaluate_model(model_dir, src_path, ref_path, device=device)["bleu"]}
    available = len(checkpoint.step_checkpoints(model_dir))
    if checkpoint.ema_checkpoint(model_dir) is not None:  # train.ema_decay kept a moving average
        checkpoint.use_ema(model_dir)
        found["ema"] = evaluate_model(model_dir, src_path, ref_path, device=device)["bleu"]
    for last in lasts:
        if last > available:
            log.warning("%s holds %d step checkpoints; skipping the average of the last %d", model_dir, available, last)
            continue
        checkpoint.average_checkpoints(model_dir, last)
        found[f"last{last}"] = evaluate_model(model_dir, src_path, ref_path, device=device)["bleu"]
    chosen = max(found, key=lambda name: (found[name], name == "none"))  # ties keep the plain model
    checkpoint.forget_average(model_dir)
    if chosen == "ema":
        checkpoint.use_ema(model_dir)
    elif chosen != "none":
        checkpoint.average_checkpoints(model_dir, int(chosen[4:]))
    return {"bleu": found, "chosen": chosen}
