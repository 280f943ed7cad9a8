"""End-to-end jobs the CLI calls: train a run, translate lines or files, evaluate a model."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TextIO

import torch
import yaml
from tqdm import tqdm

from nmt import checkpoint, distributed
from nmt.config import Config, DecodeConfig, from_dict, merge, save_config, to_dict, validate
from nmt.data import Preparation, TrainingData, cache_root, check_output_path, read_corpus, read_lines
from nmt.decode import decoding_dtype, decoding_model, pack_linear_layers, translate_ids
from nmt.errors import CheckpointError, ConfigError, NMTError
from nmt.evaluate import bleu, score
from nmt.model import Transformer, count_parameters
from nmt.tokenizer import Tokenizer, load_tokenizer, prepare_tokenizer_from_sample
from nmt.train import Trainer, ValidSet, trains_in_bf16

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# Keys a resumed run may change: bounds, bookkeeping, where it runs, how it decodes. Any other
# difference from the stored config means another experiment, which belongs in another run dir.
SAFE_ON_RESUME = {
    "data": {"valid", "valid_split", "cache_dir", "workers"},
    "train": {"max_steps", "max_epochs", "max_minutes", "valid_every", "valid_bleu_sentences", "valid_bleu_seconds", "patience",
              "save_every", "keep_last", "log_every", "device", "precision", "threads", "compile", "loader_workers",
              "max_nonfinite"},
    "decode": {"beam", "length_penalty", "max_len_a", "max_len_b", "max_tokens", "nbest", "precision"},
}


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


def _read_stored_config(path: Path) -> Config:
    """The resolved config a run directory holds (written by `nmt train`)."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(values.get("model"), dict):
            values["model"].setdefault("decoder_start", "bos")  # runs written before the key existed started from BOS
        return from_dict(values)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None


def _check_resume_config(run_dir: Path, config: Config) -> None:
    """Refuse to resume a run whose stored config differs in a key that is not safe to change."""
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.is_file():
        raise CheckpointError(f"{stored_path}: missing, but {run_dir} holds checkpoints; restore it or use a new --run-dir")
    stored = to_dict(_read_stored_config(stored_path))
    new = to_dict(config)
    for section, values in new.items():
        for key, value in values.items():
            if value != stored[section][key] and key not in SAFE_ON_RESUME.get(section, set()):
                raise ConfigError(f"{run_dir} holds a run with {section}.{key}={stored[section][key]!r}, not {value!r}; "
                                  f"resuming may change only bounds, logging, device and decode keys "
                                  f"(e.g. train.max_steps); use a new --run-dir for a different experiment")


def _translate_nbest(model: Transformer, tokenizer: Tokenizer, lines: Sequence[str], decode: DecodeConfig,
                     device: torch.device, show_progress: bool = False, workers: int = 1,
                     progress: Optional[Callable[[int], None]] = None) -> list[list[tuple[str, float]]]:
    """(text, score) hypotheses per line, best first; empty (or all-space) lines give one empty hypothesis.

    `progress`, when given, is told of each batch's sentences (instead of a progress bar of its own)."""
    todo = [i for i, line in enumerate(lines) if line.strip()]
    ids = tokenizer.encode_src([lines[i].strip() for i in todo])
    with tqdm(total=len(todo), desc="translate", unit="sent", disable=not show_progress or progress is not None,
              mininterval=1.0) as bar:
        hyps = translate_ids(model, ids, decode, device, progress=progress or bar.update, workers=workers)
    out: list[list[tuple[str, float]]] = [[("", 0.0)] for _ in lines]
    for index, found in zip(todo, hyps):
        out[index] = list(zip(tokenizer.decode_tgt([h.tokens for h in found]), (h.score for h in found)))
    return out


def _translate_texts(model: Transformer, tokenizer: Tokenizer, lines: Sequence[str], decode: DecodeConfig,
                     device: torch.device, show_progress: bool = False, workers: int = 1,
                     progress: Optional[Callable[[int], None]] = None) -> list[str]:
    """The best translation of each line; empty lines map to empty lines."""
    return [found[0][0] for found in _translate_nbest(model, tokenizer, lines, decode, device, show_progress, workers,
                                                      progress)]


def _prepare_data(config: Config, run_dir: Path, resuming: bool) -> tuple[Tokenizer, TrainingData, list[str], list[str]]:
    """The tokenizer and the training corpora as token stores (streamed and cached: see nmt.data.prepare);
    returns the validation texts too. A new run trains the tokenizer on a sample of the corpora, unless
    one was trained on the same corpora with the same settings before; a resumed run keeps its own."""
    d, t = config.data, config.tokenizer
    with Preparation(d, d.workers, quiet=not distributed.is_main()) as preparation:
        valid_src, valid_tgt = (read_corpus(d.valid, d.src_lang, d.tgt_lang, d.valid_split, d.hub_config)
                                if d.valid else ([], []))
        if resuming or not distributed.is_main():
            tokenizer = load_tokenizer(run_dir)
        else:
            settings = json.dumps([preparation.key, to_dict(config)["tokenizer"], config.train.seed,
                                   importlib.metadata.version("sentencepiece")])
            cache = cache_root(d) / "tokenizers" / hashlib.sha256(settings.encode()).hexdigest()[:24]
            tokenizer = prepare_tokenizer_from_sample(
                t, run_dir, lambda: preparation.sample(t.input_sentence_size, config.train.seed, t.joint),
                config.train.seed, cache)
        data = preparation.finish(tokenizer)
    return tokenizer, data, valid_src, valid_tgt


def train(config: Config, run_dir: Path) -> dict:
    """Train (or resume) the run in `run_dir` and return a summary; works unchanged under torchrun."""
    if not config.data.train:
        raise ConfigError("data.train is empty: name a corpus (file prefix, .tsv, .jsonl, dataset dir or hub:NAME)")
    device = distributed.setup(resolve_device(config.train.device))
    try:
        return _train(config, run_dir, device)
    finally:
        distributed.teardown()


def _train(config: Config, run_dir: Path, device: torch.device) -> dict:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        _check_resume_config(run_dir, config)
    # Under torchrun, rank 0 trains the tokenizer and prepares the corpora; the other ranks wait for it (as
    # long as that takes), then load the tokenizer and map the same cached token stores.
    if distributed.is_main():
        checkpoint.forget_average(run_dir)
    with distributed.main_first("data"):
        tokenizer, corpus, valid_src, valid_tgt = _prepare_data(config, run_dir, latest is not None)
        if distributed.is_main():
            save_config(config, run_dir / CONFIG_FILE)
    torch.manual_seed(config.train.seed)
    model = build_model(config, tokenizer)
    log.info("model: %s parameters", f"{count_parameters(model):,}")
    if distributed.world_size() > 1:
        torch.manual_seed(config.train.seed + distributed.rank())  # same initial weights, different dropout masks
    valid: Optional[ValidSet] = None
    bleu_fn: Optional[Callable[[Transformer], float]] = None
    if valid_src:
        pairs = [(s.strip(), t.strip()) for s, t in zip(valid_src, valid_tgt) if s.strip() and t.strip()]
        valid = ValidSet(tokenizer.encode_src([s for s, _ in pairs]), tokenizer.encode_tgt([t for _, t in pairs]))
        limit = config.train.valid_bleu_sentences or len(pairs)
        bleu_fn = _validation_bleu(config, tokenizer, device, [s for s, _ in pairs[:limit]], [t for _, t in pairs[:limit]])
    trainer = Trainer(model, config.train, run_dir, corpus, valid, bleu_fn, device)
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
            return bleu(_translate_texts(model, tokenizer, src[:chosen[0]], decode, device), ref[:chosen[0]])
        hyps, start = [], time.perf_counter()
        while len(hyps) < len(src) and (not hyps or time.perf_counter() - start < t.valid_bleu_seconds):
            hyps += _translate_texts(model, tokenizer, src[len(hyps):len(hyps) + VALID_CHUNK], decode, device)
        chosen[0] = len(hyps)
        if len(hyps) < len(src):
            log.info("validation BLEU on the first %d of %d sentences (train.valid_bleu_seconds=%g)",
                     len(hyps), len(src), t.valid_bleu_seconds)
        return bleu(hyps, ref[:len(hyps)])
    return valid_bleu


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
        config = _read_stored_config(config_path)
        if quantize == "bf16":
            quantize, precision = None, "bf16"
        precision = precision or config.decode.precision
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision (decode.precision) must be auto, fp32 or bf16, got {precision!r}")
        tokenizer = load_tokenizer(model_dir)
        torch_device = resolve_device(device)
        dtype = decoding_dtype(precision, torch_device)
        if quantize is not None and (quantize != "int8" or torch_device.type != "cpu"):
            raise ConfigError(f"--quantize {quantize!r}: int8 (on --device cpu) or bf16 are supported")
        if quantize is not None and dtype != torch.float32:
            raise ConfigError(f"--quantize {quantize} quantizes an fp32 model, not {precision}; use --precision fp32")
        model = build_model(config, tokenizer)
        checkpoint.load_checkpoint_weights(model, checkpoint.inference_checkpoint(model_dir))
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

    def translate(self, lines: Sequence[str], beam: Optional[int] = None, show_progress: bool = False,
                  workers: int = 1, progress: Optional[Callable[[int], None]] = None, **decode) -> list[str]:
        """Translate lines; `beam` and other DecodeConfig fields override the model's stored decode settings.

        `workers` > 1 decodes in that many CPU processes of one thread each (see `translate_ids`).
        `progress(n)` is called as batches of n sentences are done (e.g. a progress bar's update).
        """
        settings = self.settings(beam, decode)
        return _translate_texts(self.model, self.tokenizer, lines, settings, self.device, show_progress, workers,
                                progress)

    def translate_nbest(self, lines: Sequence[str], nbest: int, beam: Optional[int] = None,
                        show_progress: bool = False, workers: int = 1, progress: Optional[Callable[[int], None]] = None,
                        **decode) -> list[list[tuple[str, float]]]:
        """The `nbest` best (text, score) pairs per line; score is log-probability / length**length_penalty."""
        settings = self.settings(beam, {**decode, "nbest": nbest})
        return _translate_nbest(self.model, self.tokenizer, lines, settings, self.device, show_progress, workers,
                                progress)


def write_lines_atomic(lines: Sequence[str], output: Path) -> None:
    """Write lines to `output` through a temporary file, so the file is complete or absent."""
    check_output_path(output)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, output)
    except OSError as exc:
        raise NMTError(f"{output}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read_input(input_path: Optional[Path], stdin: TextIO) -> list[str]:
    if input_path is not None:
        return read_lines(input_path)
    return [line.rstrip("\r\n") for line in stdin]


# A translation into a file goes in chunks of this many input lines, each appended to a partial file
# beside the output once done, so that a run that is stopped continues where it stopped.
RESUME_CHUNK = 10_000


class _PartialOutput:
    """OUTPUT's translation in progress: `.OUTPUT.partial`, the finished chunks' lines, and
    `.OUTPUT.partial.json`, what is being translated (`job`) and how far it got."""

    def __init__(self, output: Path, job: dict) -> None:
        self.output, self.job = output, job
        self.text = output.with_name(f".{output.name}.partial")
        self.state = output.with_name(f".{output.name}.partial.json")

    def resume(self) -> int:
        """Input lines that an earlier run of the same job translated (0 if none); anything else is dropped."""
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
            if state["job"] == self.job and self.text.stat().st_size >= state["bytes"]:
                with self.text.open("r+b") as f:
                    f.truncate(state["bytes"])  # a chunk being written when the run stopped
                return int(state["done"])
            log.info("%s: left by a translation of another input, model or settings; starting over", self.text)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # nothing to resume
        self._guard(lambda: self.text.write_bytes(b""))
        return 0

    def append(self, lines: Sequence[str], done: int) -> None:
        """Add a finished chunk's lines; `done` input lines are translated with it."""
        def write() -> None:
            with self.text.open("a", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in lines)
                f.flush()
                os.fsync(f.fileno())
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps({"job": self.job, "done": done, "bytes": self.text.stat().st_size}), encoding="utf-8")
            os.replace(tmp, self.state)
        self._guard(write)

    def finish(self) -> None:
        def move() -> None:
            os.replace(self.text, self.output)
            self.state.unlink(missing_ok=True)
        self._guard(move)

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            raise NMTError(f"{self.output}: cannot write ({exc.strerror or exc})") from None


def translate_file(model_dir: Path, input_path: Optional[Path], output_path: Optional[Path], beam: Optional[int],
                   device: str = "auto", nbest: int = 1, stdin: Optional[TextIO] = None,
                   stdout: Optional[TextIO] = None, quantize: Optional[str] = None, workers: int = 1,
                   decode: Optional[dict] = None, interactive: bool = False) -> int:
    """Translate a file (or stdin) into a file (or stdout), one line out per line in; returns the lines written.

    With nbest > 1 each input line gives `nbest` lines "INDEX ||| TRANSLATION ||| SCORE" (index from 0).
    `decode` overrides the model's decode settings ({"length_penalty": 0.6, ...}). `interactive`
    (stdin to stdout, for a person typing) translates each line as soon as it is read. Into a file,
    more than `RESUME_CHUNK` lines are translated chunk by chunk, and the same call after an
    interruption continues from the last finished chunk (see `_PartialOutput`); to stdout, each
    chunk is written as soon as it is done.
    """
    decode = decode or {}
    if interactive and (input_path is not None or output_path is not None):
        raise ConfigError("interactive translation reads stdin and writes stdout; drop --input/--output")
    if beam is not None and beam < 1:
        raise ConfigError(f"--beam must be >= 1, got {beam}")
    if nbest < 1 or (beam is not None and nbest > beam):
        raise ConfigError(f"--nbest must be between 1 and the beam size, got {nbest}")
    if output_path is not None:
        check_output_path(output_path)  # before the translating, not after it
    translator = Translator.load(model_dir, device, quantize, decode.get("precision"))
    settings = translator.settings(beam, decode)  # a bad setting stops here, before reading the input

    def render(lines: list[str], first: int = 0, progress: Optional[Callable[[int], None]] = None) -> list[str]:
        show = len(lines) > 100
        if nbest == 1:
            return translator.translate(lines, beam=beam, show_progress=show, workers=workers, progress=progress, **decode)
        found = translator.translate_nbest(lines, nbest, beam=beam, show_progress=show, workers=workers,
                                           progress=progress, **decode)
        return [f"{first + i} ||| {text} ||| {score:.4f}" for i, hyps in enumerate(found) for text, score in hyps]

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if interactive:
        count = 0
        for number, line in enumerate(iter(stdin.readline, "")):
            out = render([line.rstrip("\r\n")], number)
            stdout.writelines(text + "\n" for text in out)
            stdout.flush()
            count += len(out)
        return count
    lines = _read_input(input_path, stdin)

    def chunks(start: int) -> Iterator[tuple[int, list[str]]]:
        """(input lines done, output lines) of each chunk from line `start` on, under one progress bar."""
        sentences = [bool(line.strip()) for line in lines]  # what the progress counts
        with tqdm(total=sum(sentences), initial=sum(sentences[:start]), desc="translate", unit="sent",
                  mininterval=1.0, disable=len(lines) <= 100) as bar:
            for first in range(start, len(lines), RESUME_CHUNK):
                yield min(first + RESUME_CHUNK, len(lines)), render(lines[first:first + RESUME_CHUNK], first, bar.update)

    if output_path is None:  # chunk by chunk, so that what reads the output can start on it
        count = 0
        for _, out in chunks(0):
            stdout.writelines(line + "\n" for line in out)
            stdout.flush()
            count += len(out)
        return count
    if len(lines) <= RESUME_CHUNK:
        out = render(lines)
        write_lines_atomic(out, output_path)
        return len(out)
    # What the output is a translation of: a partial one of anything else is not continued.
    job = {"input": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(), "lines": len(lines),
           "checkpoint": _checkpoint_identity(checkpoint.inference_checkpoint(Path(model_dir))),
           "decode": dataclasses.asdict(settings), "nbest": nbest, "quantize": quantize}
    partial = _PartialOutput(output_path, job)
    done = partial.resume()
    if done:
        log.info("continuing an interrupted translation into %s: %s of %s lines were done", output_path,
                 f"{done:,}", f"{len(lines):,}")
    else:
        log.info("%s lines go into %s in chunks of %s; if stopped, the same command continues from the last chunk",
                 f"{len(lines):,}", output_path, f"{RESUME_CHUNK:,}")
    count = 0
    try:
        for end, out in chunks(done):
            partial.append(out, end)
            done, count = end, count + len(out)
    except KeyboardInterrupt:
        log.warning("stopped with %s of %s lines translated; the same command continues from there",
                    f"{done:,}", f"{len(lines):,}")
        raise
    partial.finish()
    return count


def _checkpoint_identity(path: Path) -> str:
    """The checkpoint's `sha256sums` (the SHA-256 of its weights, written when it was saved), else its path and times."""
    try:
        return (path / "sha256sums").read_text(encoding="utf-8")
    except OSError:
        stat = path.stat()
        return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"


def _ref_paths(ref_path: Path | Sequence[Path]) -> list[Path]:
    return [ref_path] if isinstance(ref_path, (str, Path)) else list(ref_path)


def evaluate_files(hyp_path: Path, ref_path: Path | Sequence[Path], bootstrap: int = 0,
                   baseline_path: Optional[Path] = None) -> dict:
    """Score a hypothesis file against a reference file (or several, one reference translation each);
    `bootstrap` and a baseline system's hypotheses (`baseline_path`) as in `nmt.evaluate.score`."""
    paths = _ref_paths(ref_path)
    baseline = read_lines(baseline_path) if baseline_path is not None else None
    return score(read_lines(hyp_path), *map(read_lines, paths), where=f"{hyp_path} vs {', '.join(map(str, paths))}",
                 bootstrap=bootstrap, baseline=baseline)


def evaluate_model(model_dir: Path, src_path: Path, ref_path: Path | Sequence[Path], beam: Optional[int] = None,
                   device: str = "auto", output_path: Optional[Path] = None, quantize: Optional[str] = None,
                   workers: int = 1, decode: Optional[dict] = None, bootstrap: int = 0,
                   baseline_path: Optional[Path] = None) -> dict:
    """Translate `src_path` with the model and score it against `ref_path` (or several reference files);
    `decode` as in `translate_file`, `bootstrap` and `baseline_path` as in `evaluate_files`."""
    decode = decode or {}
    if bootstrap < 0:
        raise NMTError(f"--bootstrap must be >= 0, got {bootstrap}")
    src, ref_paths = read_lines(src_path), _ref_paths(ref_path)
    refs = [read_lines(path) for path in ref_paths]
    baseline = read_lines(baseline_path) if baseline_path is not None else None
    if output_path is not None:
        check_output_path(output_path)
    # Every input is checked before the translation, which is the long part.
    for path, stream in zip([*ref_paths, baseline_path], [*refs, baseline]):
        if stream is not None and len(src) != len(stream):
            raise NMTError(f"{src_path} has {len(src)} lines but {path} has {len(stream)}; they must be line-aligned")
    translator = Translator.load(model_dir, device, quantize, decode.get("precision"))
    settings = translator.settings(beam, decode)
    hyps = translator.translate(src, beam=beam, show_progress=len(src) > 100, workers=workers, **decode)
    if output_path is not None:
        write_lines_atomic(hyps, output_path)
    result = score(hyps, *refs, where=str(src_path), bootstrap=bootstrap, baseline=baseline)
    result["beam"], result["length_penalty"] = settings.beam, settings.length_penalty
    return result


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
