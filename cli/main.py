"""The `nmt` command line: thin Typer wrappers that parse options, call one `nmt` function and print."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer

app = typer.Typer(help="Train, run and score transformer translation models.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
tokenizer_app = typer.Typer(help="Tokenizer commands.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")

T = TypeVar("T")


def _decode_keys() -> str:
    from dataclasses import fields

    from nmt.config import DecodeConfig

    return ", ".join(f.name for f in fields(DecodeConfig))


def _precisions() -> str:
    from nmt.config import DecodeConfig, choices

    return ", ".join(value for value in choices(DecodeConfig, "precision") if value != "auto")


DECODE_SET_HELP = ("Override a decoding setting of the model's config, e.g. --set decode.length_penalty=0.6 "
                   f"(repeatable; keys: {_decode_keys()}).")
PRECISION_HELP = (f"Decoding dtype: {_precisions()} (scores are summed in fp32 either way); default: the model's "
                  "decode.precision, whose auto is bf16 on CUDA and fp32 on CPU.")
SRC_LANG_HELP = ("Source language, for a model with language tags (NLLB: eng_Latn, or en); default: the model's "
                 "data.src_lang (a multilingual model of nmt's needs none).")
TGT_LANG_HELP = ("Target language, for a model with language tags (OPUS-MT's >>xxx<<, NLLB's deu_Latn, or de); "
                 "default: the model's data.tgt_lang (a multilingual model of nmt's needs one).")
# The config keys that decoding options set, so that an error about one names the option the user gave.
DECODE_OPTIONS = {"decode.beam": "--beam", "decode.nbest": "--nbest", "decode.precision": "--precision"}
_state = {"verbose": False}


def _with_precision(decode: dict, precision: Optional[str]) -> dict:
    """The decode overrides with --precision's value, when given."""
    return {**decode, "precision": precision} if precision is not None else decode


def _run(job: Callable[[], T], options: Optional[dict[str, str]] = None) -> T:
    """Run a library call; an NMTError becomes one line on stderr and exit code 1 (traceback with --verbose).

    `options` maps config keys to the command's options that set them ({"decode.beam": "--beam"}): an
    error about such a key names the option instead."""
    from nmt.errors import NMTError

    try:
        return job()
    except NMTError as exc:
        if _state["verbose"]:
            raise
        message, key = str(exc), getattr(exc, "key", None)
        if key in (options or {}) and message.startswith(key):
            message = options[key] + message[len(key):]
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _fail(message: str) -> None:
    """A usage error: one line on stderr, exit code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        from nmt import __version__

        def installed(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"

        typer.echo(f"nmt {__version__} (Python {sys.version.split()[0]}, torch {installed('torch')}, "
                   f"sentencepiece {installed('sentencepiece')}, sacrebleu {installed('sacrebleu')})")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs and full tracebacks on errors.")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the versions of nmt and its main dependencies, then exit.")] = False,
         ) -> None:
    """nmt: train, run and score transformer translation models."""
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # force: rebind to the current stderr on every call
    for noisy in ("datasets", "filelock", "fsspec", "urllib3", "httpx", "httpx2", "huggingface_hub", "sacrebleu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option(help="YAML config with sections data, tokenizer, model, train, decode.")] = None,
    run_dir: Annotated[Path, typer.Option(help="Directory for the tokenizer, checkpoints, metrics and resolved config; "
                                               "an existing run there is resumed.")] = Path("run"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.lr=5e-4 (repeatable).")] = None,
) -> None:
    """Train a model (or resume the run in --run-dir) and print a JSON summary; with model.init, fine-tune one."""
    from nmt.config import given_keys, load_config
    from nmt.pipeline import train as train_run

    summary = _run(lambda: train_run(load_config(config, set_ or []), run_dir, given_keys(config, set_ or [])))
    if summary.pop("rank", 0) == 0:  # under torchrun, one summary for the whole run
        typer.echo(json.dumps(summary))


@app.command("config")
def show_config(
    config: Annotated[Optional[Path], typer.Option(help="YAML config to start from (as `nmt train --config`).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set train.lr=5e-4 (repeatable).")] = None,
) -> None:
    """Print the config `nmt train` would use, every key with its value and meaning, as YAML it can read back."""
    from nmt.config import describe, load_config

    typer.echo(_run(lambda: describe(load_config(config, set_ or []))), nl=False)


@app.command()
def translate(
    model: Annotated[Path, typer.Option(help="Run directory written by `nmt train`.")],
    input: Annotated[Optional[Path], typer.Option(help="Text file to translate, one sentence a line (default: stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Where to write translations (default: stdout); written atomically.")] = None,
    beam: Annotated[Optional[int], typer.Option(help="Beam size (1 = greedy); default: the model's decode.beam.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    nbest: Annotated[int, typer.Option(help="Hypotheses per line; above 1 prints 'INDEX ||| TEXT ||| SCORE' lines.")] = 1,
    quantize: Annotated[Optional[str], typer.Option(help="int8: dynamic int8 quantization of linear layers (CPU); "
                                                         "bf16: the same as --precision bf16.")] = None,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP)] = None,
    workers: Annotated[int, typer.Option(help="CPU decoding processes of one thread each, e.g. one per core "
                                              "(often faster than 1: see the README); output unchanged.")] = 1,
    src_lang: Annotated[Optional[str], typer.Option(help=SRC_LANG_HELP)] = None,
    tgt_lang: Annotated[Optional[str], typer.Option(help=TGT_LANG_HELP)] = None,
    split_sentences: Annotated[bool, typer.Option(help="Each line is a paragraph: translate its sentences one by "
                                                       "one and join them back, one line out per line in.")] = False,
    format_: Annotated[str, typer.Option("--format", help="text (one line in, one out), html (a document or fragment: "
                                                          "text translated, markup kept), docx or odt; auto: by "
                                                          "--input's extension (.html, .htm, .docx, .odt), else text.")] = "auto",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=DECODE_SET_HELP)] = None,
) -> None:
    """Translate lines (one line in, one line out, in the same order; empty lines stay empty), or a document."""
    from nmt.config import decode_overrides
    from nmt.files import document_kind, translate_document, translate_file

    decode = _run(lambda: _with_precision(decode_overrides(set_ or []), precision), DECODE_OPTIONS)
    kind = _run(lambda: document_kind(input, format_), DECODE_OPTIONS)
    if kind != "text":
        if nbest > 1 or split_sentences:
            _fail(f"--format {kind}: a document is translated sentence by sentence already; drop "
                  f"{'--nbest' if nbest > 1 else '--split-sentences'}")
        _run(lambda: translate_document(model, input, output, kind, beam, device, quantize=quantize, workers=workers,
                                        decode=decode, src_lang=src_lang, tgt_lang=tgt_lang), DECODE_OPTIONS)
        return

    interactive = input is None and output is None and sys.stdin.isatty()
    if interactive:  # a person typing: each line is translated as it comes, not all at the end
        typer.echo("type a sentence and press Enter to translate it; Ctrl-D to end", err=True)
    elif input is None and sys.stdin.isatty():  # would otherwise wait without a word
        typer.echo(f"reading sentences from the terminal, one a line, for {output}; end with Ctrl-D", err=True)
    _run(lambda: translate_file(model, input, output, beam, device, nbest, quantize=quantize, workers=workers,
                                decode=decode, interactive=interactive, src_lang=src_lang, tgt_lang=tgt_lang,
                                split_sentences=split_sentences),
         DECODE_OPTIONS)


@app.command("eval")
def evaluate(
    hyp: Annotated[Optional[Path], typer.Option(help="Hypothesis file to score (detokenized).")] = None,
    ref: Annotated[Optional[list[Path]], typer.Option(help="Reference file, line-aligned with --hyp or --src; "
                                                           "repeat it for several references.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Run directory: translate --src with it, then score.")] = None,
    src: Annotated[Optional[Path], typer.Option(help="Source file: translated with --model; with --hyp, the sources "
                                                     "the placeholder score compares against (%s, {name}, <b> kept).")] = None,
    beam: Annotated[Optional[int], typer.Option(help="Beam size with --model; default: the model's decode.beam.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (with --model).")] = "auto",
    output: Annotated[Optional[Path], typer.Option(help="Also write the translations here (with --model).")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8 (CPU) or bf16 (GPU) inference, with --model.")] = None,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP + " With --model.")] = None,
    workers: Annotated[int, typer.Option(help="CPU decoding processes with --model (see `nmt translate`).")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=DECODE_SET_HELP + " With --model.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Add each score's 95% confidence interval from this many bootstrap "
                                                "resamples of the sentences (sacreBLEU's, seeded), e.g. 1000; 0: none.")] = 0,
    baseline: Annotated[Optional[Path], typer.Option(help="Another system's translations of the same sentences: a paired "
                                                          "bootstrap test gives its scores and the p-value of the difference.")] = None,
    src_lang: Annotated[Optional[str], typer.Option(help=SRC_LANG_HELP + " With --model.")] = None,
    tgt_lang: Annotated[Optional[str], typer.Option(help=TGT_LANG_HELP + " With --model.")] = None,
    test: Annotated[Optional[Path], typer.Option(help="With --model: a multi-way test set's file prefix PREFIX (files "
                                                      "PREFIX.en, PREFIX.de, ...[.gz]); every direction of a "
                                                      "multilingual model is scored, trained and zero-shot, in one table.")] = None,
    directions: Annotated[Optional[str], typer.Option(help="With --test: the directions to score, e.g. en-de,de-fr; "
                                                           "default: the trained ones and every zero-shot one.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="With --test: write each direction's translations into "
                                                            "this directory (PREFIX.SRC-TGT.hyp.TGT).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object with scores and signatures.")] = False,
) -> None:
    """Score translations with sacreBLEU (BLEU, chrF, TER and their signatures).

    Either --hyp FILE --ref FILE, or --model DIR --src FILE --ref FILE, or --model DIR --test PREFIX
    (a table of every direction of a multilingual model, with the share of off-target outputs
    where lingua is installed). --bootstrap adds confidence
    intervals, --baseline FILE a significance test against another system's output. With the sources
    (--src), the share of translations that keep their source's placeholders (%s, {name}, <b>, &amp;).
    """
    from nmt.config import decode_overrides
    from nmt.errors import NMTError
    from nmt.evaluate import evaluate_directions, evaluate_files, evaluate_model, format_directions, format_scores

    def job() -> dict:
        if test is not None:
            if model is None or hyp is not None or src is not None or ref:
                raise NMTError("--test PREFIX goes with --model DIR alone (it reads PREFIX.LANG for each direction)")
            if output_dir is not None:
                output_dir.mkdir(parents=True, exist_ok=True)
            wanted = [d.strip() for d in (directions or "").split(",") if d.strip()]
            return evaluate_directions(model, test, wanted, beam, device, workers,
                                       _with_precision(decode_overrides(set_ or []), precision), output_dir)
        if directions or output_dir:
            raise NMTError("--directions and --output-dir go with --model DIR --test PREFIX")
        if not ref or (hyp is None) == (model is None) or (model is not None and src is None):
            raise NMTError("give --hyp FILE --ref FILE, or --model DIR --src FILE --ref FILE")
        if hyp is not None:
            if set_:
                raise NMTError("--set changes decoding, so it goes with --model DIR --src FILE, not --hyp")
            return evaluate_files(hyp, ref, bootstrap, baseline, src)
        return evaluate_model(model, src, ref, beam, device, output, quantize, workers,
                              _with_precision(decode_overrides(set_ or []), precision),
                              bootstrap, baseline, src_lang, tgt_lang)

    scores = _run(job, DECODE_OPTIONS)
    shown = format_directions if "directions" in scores else format_scores
    typer.echo(json.dumps(scores) if json_ else shown(scores))


@app.command()
def average(
    model: Annotated[Path, typer.Option(help="Run directory written by `nmt train`.")],
    last: Annotated[list[int], typer.Option(help="Average the weights of this many most recent step checkpoints; "
                                                 "repeat it with --valid-src/--valid-ref to choose among several.")] = [5],
    valid_src: Annotated[Optional[Path], typer.Option(help="Validation sources: keep whichever of no average and each "
                                                           "--last scores the best BLEU on them.")] = None,
    valid_ref: Annotated[Optional[Path], typer.Option(help="Validation references for --valid-src.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for --valid-src decoding).")] = "auto",
) -> None:
    """Average the last N checkpoints; translate and eval then use the average."""
    from nmt.checkpoint import average_checkpoints
    from nmt.pipeline import select_average

    if (valid_src is None) != (valid_ref is None):
        _fail("--valid-src and --valid-ref go together")
    if valid_src is not None:
        typer.echo(json.dumps(_run(lambda: select_average(model, last, valid_src, valid_ref, device))))
    elif len(last) > 1:
        _fail("several --last values need --valid-src/--valid-ref to choose among them")
    else:
        typer.echo(str(_run(lambda: average_checkpoints(model, last[0]))))


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `nmt train`.")],
    output: Annotated[Path, typer.Option(help="PNG file for the curves.")] = Path("curves.png"),
) -> None:
    """Plot training/validation loss, validation BLEU and learning rate from metrics.jsonl."""
    from nmt.visualize import plot_curves

    typer.echo(str(_run(lambda: plot_curves(run_dir, output))))


@app.command()
def attention(
    model: Annotated[Path, typer.Option(help="Run directory written by `nmt train`.")],
    src: Annotated[str, typer.Option(help="The source sentence to translate and show.")],
    output: Annotated[Optional[Path], typer.Option(help="Where to write the map (default: stdout for json).")] = None,
    format: Annotated[str, typer.Option(help="png (a heatmap, needs matplotlib) or json (the raw weights).")] = "png",
    layer: Annotated[Optional[int], typer.Option(help="Only this decoder layer (1-based); default: every layer.")] = None,
    beam: Annotated[Optional[int], typer.Option(help="Beam size for the translation; default: the model's.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=DECODE_SET_HELP)] = None,
) -> None:
    """Show the cross-attention alignment between a sentence and its translation."""
    from nmt.config import decode_overrides
    from nmt.errors import NMTError

    def job() -> str:
        from nmt.data import check_output_path
        from nmt.files import write_lines_atomic
        from nmt.translator import Translator
        from nmt.visualize import alignment, plot_alignment

        if format not in ("png", "json"):
            raise NMTError(f"--format {format!r}: choose png or json")
        decode = decode_overrides(set_ or [])
        if output is not None:
            check_output_path(output)
        translator = Translator.load(model, device)
        if layer is not None and not 1 <= layer <= translator.config.model.n_decoder_layers:
            raise NMTError(f"--layer {layer}: the model has decoder layers 1 to {translator.config.model.n_decoder_layers}")
        data = alignment(translator, src, beam, decode)
        if layer is not None:
            data["layers"] = [data["layers"][layer - 1]]
        if format == "json":
            if output is None:
                return json.dumps(data)
            write_lines_atomic([json.dumps(data)], output)
            return str(output)
        if output is None:
            raise NMTError("--format png needs --output FILE")
        return str(plot_alignment(data, output))

    typer.echo(_run(job, DECODE_OPTIONS))


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="Run directory written by `nmt train`.")],
    output: Annotated[Path, typer.Option(help="New directory for the exported model (a FILE.argosmodel for argos).")],
    format: Annotated[str, typer.Option(help="Export format: hf (a Hugging Face transformers MarianMT directory), "
                                             "ct2 (a CTranslate2 model directory) or argos (an Argos Translate "
                                             "package, which LibreTranslate serves).")] = "hf",
    quantization: Annotated[Optional[str], typer.Option(help="ct2 and argos: CTranslate2 weight type, e.g. int8 "
                                                             "(default float32).")] = None,
    src_lang: Annotated[Optional[str], typer.Option(help="argos, for a multilingual model: the direction's source "
                                                         "language (one package per direction).")] = None,
    tgt_lang: Annotated[Optional[str], typer.Option(help="argos, for a multilingual model: the direction's target "
                                                         "language.")] = None,
) -> None:
    """Export a model for other toolkits; needs `pip install 'nmt\\[export]'`. A multilingual model exports
    whole to hf and ct2 (sources start with the target's tag, >>de<<) and one direction at a time to argos."""
    from nmt.errors import NMTError

    def job() -> Path:
        from nmt.export import export_argos, export_ct2, export_hf

        if (src_lang or tgt_lang) and format != "argos":
            raise NMTError("--src-lang and --tgt-lang apply to --format argos only")
        if format == "ct2":
            return export_ct2(model, output, quantization)
        if format == "argos":
            return export_argos(model, output, quantization, src_lang, tgt_lang)
        if format != "hf":
            raise NMTError(f"--format {format!r}: choose hf, ct2 or argos")
        if quantization is not None:
            raise NMTError("--quantization applies to --format ct2 and argos only")
        return export_hf(model, output)

    typer.echo(str(_run(job)))


@app.command()
def serve(
    model: Annotated[list[Path], typer.Option(help="Run directory written by `nmt train`; repeat it to serve several "
                                                   "language pairs (each model's data.src_lang and data.tgt_lang).")],
    host: Annotated[str, typer.Option(help="Address to listen on; the default takes connections from this machine "
                                           "only, 0.0.0.0 from anywhere.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one, printed at start).")] = 5000,
    api_keys: Annotated[Optional[Path], typer.Option(help="File of API keys, one a line: /translate then needs one "
                                                          "of them as api_key.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    quantize: Annotated[Optional[str], typer.Option(help="int8 (CPU) or bf16 (GPU), as `nmt translate --quantize`.")] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(help="Source-token budget of one decoding batch times the "
                                                                 "beam, shared by all waiting requests (default: the "
                                                                 "model's decode.max_tokens, whose 0 means 6,000 "
                                                                 "on CPU and 60,000 on CUDA).")] = None,
    max_chars: Annotated[int, typer.Option(help="Most characters of q in one request.")] = 10_000,
    max_sentences: Annotated[int, typer.Option(help="Most sentences of q in one request (after splitting).")] = 200,
    max_file_mb: Annotated[float, typer.Option(help="Largest file /translate_file takes, in MB.")] = 10.0,
    max_file_chars: Annotated[int, typer.Option(help="Most characters of text in one uploaded file.")] = 200_000,
    split_sentences: Annotated[bool, typer.Option(help="Translate each line of q as a paragraph, sentence by "
                                                       "sentence, as LibreTranslate does; --no-split-sentences: "
                                                       "each line is one sentence.")] = True,
) -> None:
    """Serve models over LibreTranslate's HTTP API (/translate with text or HTML, /translate_file,
    /detect, /languages, /frontend/settings, /health).

    Concurrent requests are decoded together in batches. Ctrl-C or SIGTERM stop taking new
    connections, answer the requests in flight, then exit. Needs `pip install 'nmt\\[serve]'`.
    """
    def job() -> None:
        from nmt.serve import Limits, serve as serve_models

        serve_models(model, host, port, api_keys, device, quantize, max_batch_tokens,
                     Limits(max_chars=max_chars, max_sentences=max_sentences, max_file_chars=max_file_chars,
                            max_file_bytes=int(max_file_mb * 1024 * 1024)), split_sentences)

    _run(job)


@app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="A Hugging Face model directory (MarianMT / OPUS-MT, M2M100, NLLB-200) "
                                               "or hub:NAME, e.g. hub:Helsinki-NLP/opus-mt-en-de (downloaded).")],
    run_dir: Annotated[Path, typer.Option(help="New directory for the imported model: an ordinary nmt run "
                                               "directory that translate, eval, serve, export and train take.")],
    src_lang: Annotated[str, typer.Option(help="Default source language (data.src_lang), e.g. en; for models with "
                                               "language tags, a code of theirs or one that names it.")] = "",
    tgt_lang: Annotated[str, typer.Option(help="Default target language (data.tgt_lang), e.g. de.")] = "",
) -> None:
    """Import a pretrained translation model and print a JSON summary; nothing is written unless all of it is."""
    def job() -> dict:
        from nmt.importing.run import import_model

        return import_model(source, run_dir, src_lang, tgt_lang)

    summary = _run(job)
    summary["languages"] = len(summary["languages"])
    typer.echo(json.dumps(summary))


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: Annotated[str, typer.Option(help="Parallel corpus: file prefix (PREFIX.SRC/.TGT), .tsv, .jsonl, dataset dir or hub:NAME.")],
    output: Annotated[Path, typer.Option(help="Directory to write spm.model (or spm.src.model and spm.tgt.model).")],
    src_lang: Annotated[str, typer.Option(help="Source language code.")] = "en",
    tgt_lang: Annotated[str, typer.Option(help="Target language code.")] = "de",
    split: Annotated[str, typer.Option(help="Split to read when the corpus is a dataset.")] = "train",
    joint: Annotated[bool, typer.Option("--joint/--separate", help="One shared vocabulary, or one per language.")] = True,
    model_type: Annotated[str, typer.Option("--type", help="unigram or bpe.")] = "unigram",
    vocab_size: Annotated[int, typer.Option(help="Pieces per vocabulary, special tokens included.")] = 8000,
    character_coverage: Annotated[float, typer.Option(help="Share of characters covered (0.9995 for CJK).")] = 1.0,
) -> None:
    """Train SentencePiece model(s) on a parallel corpus; point tokenizer.model at the result."""
    from nmt.config import load_config
    from nmt.data import open_corpus, sample_corpus
    from nmt.errors import NMTError
    from nmt.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE, prepare_tokenizer_from_sample

    def job() -> list[str]:
        config = load_config(None, [f"tokenizer.joint={joint}", f"model.share_embeddings={joint}", f"tokenizer.type={model_type}",
                                    f"tokenizer.vocab_size={vocab_size}", f"tokenizer.character_coverage={character_coverage}"])
        existing = [f for f in (JOINT_FILE, SRC_FILE, TGT_FILE) if (output / f).exists()]
        if existing:
            raise NMTError(f"{output / existing[0]} already exists; choose another --output or remove it")
        source = open_corpus(corpus, src_lang, tgt_lang, split)  # read as a stream, sampled: any size fits
        sample = lambda: sample_corpus(source, config.tokenizer.input_sentence_size, 1, joint)  # noqa: E731
        return [str(f) for f in prepare_tokenizer_from_sample(config.tokenizer, output, sample).files]

    for path in _run(job):
        typer.echo(path)


if __name__ == "__main__":
    app()
