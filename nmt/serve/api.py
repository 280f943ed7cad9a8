"""LibreTranslate's HTTP API over the decoding loops (Starlette): /translate, /translate_file and
/download_file, /detect, /languages, /frontend/settings, /health.

The request and answer shapes are LibreTranslate's, so its clients work unchanged: parameters as
JSON or as a form (its Python client sends forms), `q` a string or a list of strings, answers
`{"translatedText": ...}` (plus `"alternatives"` when asked for, `"detectedLanguage"` for `source:
auto`), and every refusal a 4xx with `{"error": "..."}`. A text in `q` may hold several lines, each
a paragraph: its sentences are translated as `nmt translate --split-sentences` translates a line of
a file (unless the server runs with sentence splitting off), and the answer keeps the line breaks
and the paragraph's spaces. `format: html` translates the text of an HTML fragment in place
(`nmt.documents.html`). The work of a request is `nmt.serve.translating`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nmt.documents.sentences import Segmenter, segmenter_for
from nmt.errors import DataError
from nmt.languages import language_name
from nmt.serve import translating
from nmt.serve.batching import DecodingLoop
from nmt.serve.params import (ApiKeys, BodyLimit, BodyTooLarge, Limits, RequestError, alternatives_of, check_chars,
                              check_key, check_sentences, error, read_params, texts_of)
from nmt.serve.uploads import TranslatedFiles

log = logging.getLogger("nmt.serve")

FILE_KINDS = {".txt": "text", ".html": "html", ".htm": "html", ".docx": "docx", ".odt": "odt"}


@dataclass(frozen=True)
class Pair:
    """A language pair the server translates, with the loop that decodes it; `languages` are the model's
    own codes of the two (its language tags), for a model that translates several pairs."""

    source: str
    target: str
    loop: DecodingLoop
    languages: tuple[Optional[str], Optional[str]] = (None, None)

    @property
    def beam(self) -> int:
        return self.loop.translator.config.decode.beam


def create_app(pairs: list[Pair], limits: Limits = Limits(), api_keys: Optional[ApiKeys] = None,
               split_sentences: bool = True, detect: bool = True) -> Starlette:
    """The ASGI app. Its lifespan starts the pairs' decoding loops and, once the server has answered
    its last request (on shutdown), stops them. `detect` builds a language identifier over the served
    source languages (for /detect and `source: auto`)."""
    by_pair = {(p.source, p.target): p for p in pairs}
    loops = list({id(p.loop): p.loop for p in pairs}.values())  # a model with language tags serves several pairs
    segmenters: dict[tuple[str, str], Segmenter] = {
        key: segmenter_for(p.loop.translator, *p.languages, split=split_sentences) for key, p in by_pair.items()}
    detector = _detector(sorted({p.source for p in pairs})) if detect else None
    files = TranslatedFiles()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for loop in loops:
            loop.start()
        try:
            yield
        finally:
            for loop in loops:
                await asyncio.to_thread(loop.stop)
            files.close()

    async def translate(request: Request) -> Response:
        params = await read_params(request, limits.max_body_bytes)
        if api_keys is not None:
            check_key(params, api_keys)
        texts, is_list = texts_of(params.get("q"))
        format = params.get("format") or "text"
        if format not in ("text", "html"):
            raise RequestError(400, f"Invalid request: format must be text or html, got {format!r}")
        alternatives = alternatives_of(params.get("alternatives", 0), limits.max_alternatives)
        if alternatives and format == "html":
            raise RequestError(400, "Invalid request: alternatives are given for format text only")
        check_chars(texts, limits)
        chosen, detected = _choose(by_pair, detector, params.get("source"), params.get("target"), texts)
        works = [translating.prepare(pair.loop, pair.languages, segmenters[(pair.source, pair.target)], text, format)
                 for text, pair in zip(texts, chosen)]
        check_sentences(sum(len(work.job.sentences) for work in works), limits)
        await translating.run(works, alternatives + 1, request)
        answers = [translating.answer(work, alternatives) for work in works]
        body: dict[str, Any] = {"translatedText": [a[0] for a in answers] if is_list else answers[0][0]}
        if alternatives:
            body["alternatives"] = [a[1] for a in answers] if is_list else answers[0][1]
        if detected is not None:
            body["detectedLanguage"] = detected if is_list else detected[0]
        return JSONResponse(body)

    async def translate_file(request: Request) -> Response:
        params = await read_params(request, limits.body_limit(request.url.path), files=True)
        if api_keys is not None:
            check_key(params, api_keys)
        upload = params.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "Invalid request: missing file parameter (a multipart/form-data upload)")
        name = upload.filename or ""
        kind = FILE_KINDS.get(PurePath(name).suffix.lower())
        if kind is None:
            suffix = PurePath(name).suffix or "no extension"
            raise RequestError(400, f"Invalid request: file format not supported ({suffix}); this server translates "
                                    f"{', '.join(FILE_KINDS)} files")
        data = await upload.read()
        if not data:
            raise RequestError(400, "Invalid request: empty file")
        document = _read_file(data, kind)
        blocks = document.blocks() if kind != "text" else translating.text_blocks(document)
        chars = sum(len(block.text) for block in blocks)
        if chars > limits.max_file_chars:
            raise RequestError(413, f"Invalid request: the file's text ({chars:,} characters) exceeds this server's "
                                    f"limit of {limits.max_file_chars:,}")
        sample = [" ".join(block.text for block in blocks)[:2000]]
        (pair,), _ = _choose(by_pair, detector, params.get("source"), params.get("target"), sample)
        work = translating.Work(pair.loop, pair.languages,
                                translating.BlockJob(blocks, segmenters[(pair.source, pair.target)]),
                                None if kind == "text" else document)
        await translating.run([work], 1, request)
        translated, _ = translating.answer(work)
        stored = files.add(name, translated.encode("utf-8") if isinstance(translated, str) else translated)
        return JSONResponse({"translatedFileUrl": str(request.url_for("download_file", filename=stored))})

    async def download_file(request: Request) -> Response:
        found = files.get(request.path_params["filename"])
        if found is None:
            raise RequestError(404, "Invalid filename: no such translated file (files are kept for an hour)")
        data, original = found
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{original}"'})

    async def detect_language(request: Request) -> Response:
        params = await read_params(request, limits.max_body_bytes)
        if api_keys is not None:
            check_key(params, api_keys)
        texts, is_list = texts_of(params.get("q"))
        check_chars(texts, limits)
        if detector is None:
            raise RequestError(400, "Language detection is not available on this server (it needs lingua: "
                                    "pip install 'nmt[serve]')")
        found = await asyncio.to_thread(lambda: detector.detect_all(texts) if is_list else detector.detect(texts[0]))
        return JSONResponse([{"confidence": c["confidence"], "language": c["language"]} for c in found])

    async def languages(request: Request) -> Response:
        codes = sorted({code for pair in by_pair for code in pair})
        return JSONResponse([{"code": code, "name": language_name(code),
                              "targets": sorted(t for s, t in by_pair if s == code)} for code in codes])

    async def frontend_settings(request: Request) -> Response:
        source, target = sorted(by_pair)[0]
        shown_source = {"code": "auto", "name": "Auto Detect"} if detector is not None else \
            {"code": source, "name": language_name(source)}
        return JSONResponse({"charLimit": limits.max_chars, "frontendTimeout": 500, "apiKeys": api_keys is not None,
                             "keyRequired": api_keys is not None, "suggestions": False, "filesTranslation": True,
                             "supportedFilesFormat": list(FILE_KINDS),
                             "language": {"source": shown_source,
                                          "target": {"code": target, "name": language_name(target)}}})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, f"Cannot translate text: {type(exc).__name__}")

    routes = [Route("/translate", _endpoint(translate), methods=["POST"]),
              Route("/translate_file", _endpoint(translate_file), methods=["POST"]),
              Route("/download_file/{filename}", _endpoint(download_file), methods=["GET"], name="download_file"),
              Route("/detect", _endpoint(detect_language), methods=["POST"]),
              Route("/languages", _endpoint(languages), methods=["GET"]),
              Route("/frontend/settings", _endpoint(frontend_settings), methods=["GET"]),
              Route("/health", _endpoint(health), methods=["GET"])]
    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],  # as LibreTranslate
                             allow_headers=["Authorization", "Content-Type"]),
                  Middleware(BodyLimit, limits=limits)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: internal_error})


def _detector(codes: list[str]):
    """A LanguageDetector over the served source languages, or None where lingua is not installed (its
    NMTError says how to install it) or cannot be built."""
    try:
        from nmt.documents.detect import LanguageDetector
        detector = LanguageDetector(codes)
        return detector if detector.codes else None  # none of the languages is one it knows
    except Exception as exc:  # noqa: BLE001 - serving goes on without detection, said once
        log.warning("language detection (/detect, source: auto) is off: %s", exc)
        return None


def _choose(by_pair: dict[tuple[str, str], Pair], detector, source: Any, target: Any,
            texts: list[str]) -> tuple[list[Pair], Optional[list[dict]]]:
    """The pair for each text, and with `source: auto` the language detected in each (else None)."""
    if source != "auto":
        return [_pair(by_pair, source, target)] * len(texts), None
    if detector is None:
        _pair(by_pair, source, target)  # the refusal that names what is served
    detected = [detector.detect(text)[0] for text in texts]
    chosen = []
    for found in detected:
        if (found["language"], target) not in by_pair:
            raise RequestError(400, f"{found['language']} (detected) to {target} is not supported; name the source "
                                    f"language")
        chosen.append(by_pair[(found["language"], target)])
    return chosen, [{"confidence": d["confidence"], "language": d["language"]} for d in detected]


def _read_file(data: bytes, kind: str):
    """An uploaded file as a document (HTML, office) or, for .txt, its text; a 400 if it cannot be read."""
    try:
        if kind in ("text", "html"):
            text = data.decode("utf-8-sig")
            return translating.parse_html(text) if kind == "html" else text
        from nmt.documents.office import OfficeDocument
        return OfficeDocument(data, kind)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"Invalid request: the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except DataError as exc:
        raise RequestError(400, f"Invalid request: {exc}") from None


def _pair(pairs: dict[tuple[str, str], Pair], source: Any, target: Any) -> Pair:
    for name, value in (("source", source), ("target", target)):
        if not value:
            raise RequestError(400, f"Invalid request: missing {name} parameter")
        if not isinstance(value, str):
            raise RequestError(400, f"Invalid request: {name} must be a language code such as \"en\"")
    served = ", ".join(f"{s}-{t}" for s, t in sorted(pairs))
    if len(pairs) > 12:  # a model with many languages: what the source translates into, or the sources
        targets = sorted(t for s, t in pairs if s == source)
        served = (f"{source} into {', '.join(targets[:12])}{' and more' if len(targets) > 12 else ''}" if targets else
                  "from " + ", ".join(sorted({s for s, _ in pairs})[:20]) + (" and more" if len(pairs) > 20 else ""))
    if source == "auto":
        raise RequestError(400, f"Language detection (source: auto) is not available on this server; name the "
                                f"source language (this server translates {served})")
    if (source, target) not in pairs:
        raise RequestError(400, f"{source} to {target} is not supported; this server translates {served}")
    return pairs[(source, target)]


def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The handler with refusals turned into `{"error": ...}` answers and one log line per request
    (method, path, status, time: never the query string or the body, which may hold an API key)."""
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as exc:
            response = error(exc.status, exc.message)
        except BodyTooLarge:
            response = error(413, "Request body is over this server's limit")
        except (ClientDisconnect, translating.ClientGone):
            response = Response(status_code=499)
        log.debug("%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
                  1000 * (time.perf_counter() - started))
        return response
    return run


