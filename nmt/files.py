"""Translating files and streams with a `Translator`: a file into a file in resumable chunks, stdin to
stdout chunk by chunk, or line by line for a person typing; n-best lists as Moses-style lines; each
line as a paragraph of sentences; an HTML, .docx or .odt document in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TextIO

from tqdm import tqdm

from nmt import atomic, checkpoint
from nmt.data import check_output_path, read_lines
from nmt.documents.sentences import Segments, segmenter_for
from nmt.documents.translate import translate_paragraphs
from nmt.errors import ConfigError, NMTError
from nmt.translator import Translator

log = logging.getLogger(__name__)


def write_lines_atomic(lines: Sequence[str], output: Path) -> None:
    """Write lines to `output` through a temporary file, so the file is complete or absent."""
    check_output_path(output)

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
    atomic.save(output, write)


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
            atomic.write_text(self.state, json.dumps({"job": self.job, "done": done, "bytes": self.text.stat().st_size}))
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
                   decode: Optional[dict] = None, interactive: bool = False, src_lang: Optional[str] = None,
                   tgt_lang: Optional[str] = None, split_sentences: bool = False) -> int:
    """Translate a file (or stdin) into a file (or stdout), one line out per line in; returns the lines written.

    With nbest > 1 each input line gives `nbest` lines "INDEX ||| TRANSLATION ||| SCORE" (index from 0).
    `decode` overrides the model's decode settings ({"length_penalty": 0.6, ...}). `interactive`
    (stdin to stdout, for a person typing) translates each line as soon as it is read. Into a file,
    more than `RESUME_CHUNK` lines are translated chunk by chunk, and the same call after an
    interruption continues from the last finished chunk (see `_PartialOutput`); to stdout, each
    chunk is written as soon as it is done. `src_lang` and `tgt_lang` choose a tagged model's languages
    (`Translator.tokenizer_for`). `split_sentences` translates each line as a paragraph: its sentences one
    by one, joined back with the line's own spaces (see `nmt.documents.sentences`); otherwise a line
    too long for the model is still cut at word boundaries rather than truncated.
    """
    decode = decode or {}
    if interactive and (input_path is not None or output_path is not None):
        raise ConfigError("interactive translation reads stdin and writes stdout; drop --input/--output")
    if split_sentences and nbest > 1:
        raise ConfigError("--nbest lists hypotheses of one sentence; drop it or --split-sentences")
    if output_path is not None:
        check_output_path(output_path)  # before the translating, not after it
    translator = Translator.load(model_dir, device, quantize, decode.get("precision"))
    translator.settings(beam, {**decode, "nbest": nbest})  # a bad setting stops here, before reading the input
    settings = translator.settings(beam, decode)
    translator.tokenizer_for(src_lang, tgt_lang)  # a language the model has no tag for stops here too
    languages = {"src_lang": src_lang, "tgt_lang": tgt_lang}
    segmenter = segmenter_for(translator, src_lang, tgt_lang, split=split_sentences)

    def render(lines: list[str], first: int = 0, progress: Optional[Callable[[int], None]] = None,
               segments: Optional[list[Segments]] = None) -> list[str]:
        show = len(lines) > 100
        if nbest == 1:
            return translate_paragraphs(lines, segmenter, lambda sentences: translator.translate(
                sentences, beam=beam, show_progress=show, workers=workers, progress=progress, **languages, **decode),
                segments)
        found = translator.translate_nbest(lines, nbest, beam=beam, show_progress=show, workers=workers,
                                           progress=progress, **languages, **decode)
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
    # Cut into sentences once: what the progress counts, and what is translated.
    segmented = [segmenter.segment(line) for line in lines] if split_sentences else None

    def chunks(start: int) -> Iterator[tuple[int, list[str]]]:
        """(input lines done, output lines) of each chunk from line `start` on, under one progress bar."""
        sentences = ([len(segments.sentences) for segments in segmented] if segmented is not None else
                     [bool(line.strip()) for line in lines])
        with tqdm(total=sum(sentences), initial=sum(sentences[:start]), desc="translate", unit="sent",
                  mininterval=1.0, disable=len(lines) <= 100) as bar:
            for first in range(start, len(lines), RESUME_CHUNK):
                part = slice(first, first + RESUME_CHUNK)
                yield min(first + RESUME_CHUNK, len(lines)), render(
                    lines[part], first, bar.update, segmented[part] if segmented is not None else None)

    if output_path is None:  # chunk by chunk, so that what reads the output can start on it
        count = 0
        for _, out in chunks(0):
            stdout.writelines(line + "\n" for line in out)
            stdout.flush()
            count += len(out)
        segmenter.report()
        return count
    if len(lines) <= RESUME_CHUNK:
        out = render(lines, segments=segmented)
        segmenter.report()
        write_lines_atomic(out, output_path)
        return len(out)
    # What the output is a translation of: a partial one of anything else is not continued.
    job = {"input": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(), "lines": len(lines),
           **({"languages": [src_lang, tgt_lang]} if src_lang or tgt_lang else {}),
           "checkpoint": _checkpoint_identity(checkpoint.inference_checkpoint(Path(model_dir))),
           "decode": dataclasses.asdict(settings), "nbest": nbest, "quantize": quantize,
           **({"split_sentences": True} if split_sentences else {})}
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
    segmenter.report()
    partial.finish()
    return count


def _checkpoint_identity(path: Path) -> str:
    """The checkpoint's `sha256sums` (the SHA-256 of its weights, written when it was saved), else its path and times."""
    try:
        return (path / "sha256sums").read_text(encoding="utf-8")
    except OSError:
        stat = path.stat()
        return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"


DOCUMENT_KINDS = {".html": "html", ".htm": "html", ".xhtml": "html", ".docx": "docx", ".odt": "odt"}


def document_kind(input_path: Optional[Path], format: str) -> str:
    """What `--format` means for this input: text (lines), html, docx or odt; auto goes by the file's extension."""
    if format == "auto":
        return DOCUMENT_KINDS.get(input_path.suffix.lower(), "text") if input_path is not None else "text"
    if format not in ("text", "html", "docx", "odt"):
        raise ConfigError(f"--format must be auto, text, html, docx or odt, got {format!r}")
    return format


def translate_document(model_dir: Path, input_path: Optional[Path], output_path: Optional[Path], kind: str,
                       beam: Optional[int] = None, device: str = "auto", stdin: Optional[TextIO] = None,
                       stdout: Optional[TextIO] = None, quantize: Optional[str] = None, workers: int = 1,
                       decode: Optional[dict] = None, src_lang: Optional[str] = None,
                       tgt_lang: Optional[str] = None) -> int:
    """Translate one HTML, .docx or .odt document in place (text and human-readable attributes; markup,
    code and layout kept: see `nmt.documents`); returns the sentences translated. The output is
    written whole, atomically; HTML may come from stdin and go to stdout, office files need files."""
    from nmt.documents.alignment import word_links
    from nmt.documents.translate import translate_blocks

    decode = decode or {}
    if kind != "html" and (input_path is None or output_path is None):
        raise ConfigError(f"a .{kind} document needs --input FILE and --output FILE (it is not text to stream)")
    if output_path is not None:
        check_output_path(output_path)
    translator = Translator.load(model_dir, device, quantize, decode.get("precision"))
    translator.settings(beam, decode)
    translator.tokenizer_for(src_lang, tgt_lang)
    document = _read_document(input_path, kind, stdin or sys.stdin)
    segmenter = segmenter_for(translator, src_lang, tgt_lang)
    count = 0

    def translate(sentences: list[str]) -> list[str]:
        nonlocal count
        count = len(sentences)
        return translator.translate(sentences, beam=beam, show_progress=len(sentences) > 100, workers=workers,
                                    src_lang=src_lang, tgt_lang=tgt_lang, **decode)

    results = translate_blocks(document.blocks(), segmenter, translate,
                               lambda pairs: word_links(translator, pairs, src_lang, tgt_lang))
    segmenter.report()
    rendered = document.render(results)
    if output_path is None:
        (stdout or sys.stdout).write(rendered)
    elif isinstance(rendered, bytes):
        atomic.write_bytes(output_path, rendered)
    else:
        atomic.write_text(output_path, rendered)
    return count


def _read_document(input_path: Optional[Path], kind: str, stdin: TextIO):
    """The parsed document (`HtmlDocument` or `OfficeDocument`), or a DataError saying why it cannot be read."""
    from nmt.documents.html import HtmlDocument

    try:
        if kind == "html":
            return HtmlDocument(input_path.read_text(encoding="utf-8") if input_path is not None else stdin.read())
        from nmt.documents.office import OfficeDocument
        assert input_path is not None
        return OfficeDocument(input_path.read_bytes(), kind)
    except OSError as exc:
        raise NMTError(f"{input_path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise NMTError(f"{input_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
