"""LibreTranslate's HTTP API over the decoding loops: POST /translate, GET /languages, GET /health (Starlette).

The request and answer shapes are LibreTranslate's, so its clients work unchanged: parameters as
JSON or as a form (its Python client sends forms), `q` a string or a list of strings, answers
`{"translatedText": ...}` (plus `"alternatives"` when asked for), and every refusal a 4xx with
`{"error": "..."}`. A text in `q` may hold several lines: each is translated as `nmt translate`
translates a line of a file, and the answer keeps the line breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nmt.errors import NMTError
from nmt.languages import language_name
from nmt.serve.batching import DecodingLoop

log = logging.getLogger("nmt.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests are refused with a 4xx, not queued."""

    max_chars: int = 10_000  # characters of `q`, all its texts together
    max_sentences: int = 200  # lines of `q`, all its texts together (each line is one sentence to decode)
    max_alternatives: int = 3  # LibreTranslate's default limit

    @property
    def max_body_bytes(self) -> int:
        """The largest body read: room for `max_chars` characters at their longest encoding (a
        4-byte character is 12 bytes percent-encoded in a form) plus the other parameters."""
        return 12 * self.max_chars + 64 * 1024


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyTooLarge(Exception):
    pass


class ApiKeys:
    """The keys a client must send as `api_key`; compared in constant time, never logged."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    @classmethod
    def load(cls, path: Path) -> "ApiKeys":
        """One key a line; blank lines and lines starting with # are skipped."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise NMTError(f"--api-keys {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise NMTError(f"--api-keys {path}: no keys in it (one key a line); add one or drop --api-keys")
        return cls(keys)

    def allows(self, key: str) -> bool:
        given = key.encode("utf-8")
        found = False
        for known in self._keys:  # every key is compared, so the time says nothing about which matched
            found |= hmac.compare_digest(given, known)
        return found


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


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 before reading it whole: at once when its
    Content-Length says so, else as soon as the bytes received pass the limit. (Starlette's own
    limit, new in 1.10, answers in plain text, not with LibreTranslate's `{"error": ...}`.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            response = _error(413 if declared.isdigit() else 400, f"Request body of {declared.decode('latin-1')} bytes "
                              f"is over this server's limit of {self.limit} bytes" if declared.isdigit() else
                              "Invalid request: bad Content-Length header")
            response.headers["Connection"] = "close"  # the unread body cannot be skipped on this connection
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message
        await self.app(scope, limited, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(pairs: list[Pair], limits: Limits = Limits(), api_keys: Optional[ApiKeys] = None) -> Starlette:
    """The ASGI app. Its lifespan starts the pairs' decoding loops and, once the server has answered
    its last request (on shutdown), stops them."""
    by_pair = {(p.source, p.target): p for p in pairs}
    loops = list({id(p.loop): p.loop for p in pairs}.values())  # a model with language tags serves several pairs

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for loop in loops:
            loop.start()
        try:
            yield
        finally:
            for loop in loops:
                await asyncio.to_thread(loop.stop)

    async def translate(request: Request) -> Response:
        params = await _read_params(request, limits.max_body_bytes)
        if api_keys is not None:
            _check_key(params, api_keys)
        texts, is_list = _texts(params.get("q"))
        pair = _pair(by_pair, params.get("source"), params.get("target"))
        if (params.get("format") or "text") != "text":
            raise RequestError(400, f"{params.get('format')} format is not supported; this server translates plain text "
                                    "(format: text)")
        alternatives = _alternatives(params.get("alternatives", 0), limits.max_alternatives)
        lines = [_split_lines(text) for text in texts]
        _check_size(texts, lines, limits)
        flat = [line for text_lines in lines for line in text_lines]
        job = pair.loop.submit(flat, max(pair.beam, alternatives + 1), alternatives + 1, pair.languages)
        if not await _wait_unless_gone(job.future, request):
            pair.loop.cancel(job)
            return Response(status_code=499)  # nobody reads it: the client has gone
        found, answers = iter(job.future.result()), []
        for text_lines in lines:
            hyps = [next(found) for _ in text_lines]
            best = "\n".join(h[0][0] for h in hyps)
            others = ["\n".join(h[min(i, len(h) - 1)][0] for h in hyps) for i in range(1, alternatives + 1)]
            answers.append((best, list(dict.fromkeys(o for o in others if o != best))))  # unique, as LibreTranslate
        body: dict[str, Any] = {"translatedText": [a[0] for a in answers] if is_list else answers[0][0]}
        if alternatives:
            body["alternatives"] = [a[1] for a in answers] if is_list else answers[0][1]
        return JSONResponse(body)

    async def languages(request: Request) -> Response:
        codes = sorted({code for pair in by_pair for code in pair})
        return JSONResponse([{"code": code, "name": language_name(code),
                              "targets": sorted(t for s, t in by_pair if s == code)} for code in codes])

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"Cannot translate text: {type(exc).__name__}")

    routes = [Route("/translate", _endpoint(translate), methods=["POST"]),
              Route("/languages", _endpoint(languages), methods=["GET"]),
              Route("/health", _endpoint(health), methods=["GET"])]
    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],  # as LibreTranslate
                             allow_headers=["Authorization", "Content-Type"]),
                  Middleware(BodyLimit, limit=limits.max_body_bytes)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: internal_error})


def _endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The handler with refusals turned into `{"error": ...}` answers and one log line per request
    (method, path, status, time: never the query string or the body, which may hold an API key)."""
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as exc:
            response = _error(exc.status, exc.message)
        except BodyTooLarge:
            response = _error(413, "Request body is over this server's limit")
        except ClientDisconnect:
            response = Response(status_code=499)
        log.debug("%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
                  1000 * (time.perf_counter() - started))
        return response
    return run


async def _read_params(request: Request, limit: int) -> dict[str, Any]:
    """The request's parameters: a JSON object, or a form's fields (URL-encoded or multipart) with the query's."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            params = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"Invalid JSON format: {exc}") from None
        if not isinstance(params, dict):
            raise RequestError(400, "Invalid JSON format: the body must be an object such as "
                                    '{"q": "...", "source": "en", "target": "de"}')
        return params
    params: dict[str, Any] = dict(request.query_params)
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form: FormData = await request.form(max_part_size=limit)
        except HTTPException as exc:  # a malformed multipart body
            raise RequestError(400, f"Invalid form data: {exc.detail}") from None
        params.update((key, value) for key, value in form.items() if isinstance(value, str))
    elif await request.body():
        raise RequestError(415, f"Unsupported content type {content_type or '(none)'!r}: send JSON "
                                "(application/json) or a form (application/x-www-form-urlencoded)")
    return params


def _check_key(params: dict[str, Any], api_keys: ApiKeys) -> None:
    key = params.get("api_key")
    if not key:
        raise RequestError(403, "Invalid request: missing api_key parameter; this server needs an API key, "
                                "ask its operator for one")
    if not isinstance(key, str) or not api_keys.allows(key):
        raise RequestError(403, "Invalid API key")


def _texts(q: Any) -> tuple[list[str], bool]:
    """The texts of `q` and whether it was a list."""
    if q is None or q == "" or q == []:
        raise RequestError(400, "Invalid request: missing q parameter")
    if isinstance(q, str):
        return [q], False
    if isinstance(q, list) and all(isinstance(text, str) for text in q):
        return q, True
    raise RequestError(400, "Invalid request: q must be a string or a list of strings")


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
        raise RequestError(400, f"Language detection (source: auto) is not supported; name the source language "
                                f"(this server translates {served})")
    if (source, target) not in pairs:
        raise RequestError(400, f"{source} to {target} is not supported; this server translates {served}")
    return pairs[(source, target)]


def _alternatives(value: Any, limit: int) -> int:
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, "Invalid request: alternatives parameter is not a number") from None
    if not 0 <= number <= limit:
        raise RequestError(400, f"Invalid request: alternatives parameter must be between 0 and {limit}, got {number}")
    return number


def _split_lines(text: str) -> list[str]:
    """A text's lines as `nmt translate` reads a file's: split on "\\n" only, a "\\r" before it dropped."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _check_size(texts: list[str], lines: list[list[str]], limits: Limits) -> None:
    chars = sum(len(text) for text in texts)
    if chars > limits.max_chars:
        raise RequestError(400, f"Invalid request: request ({chars}) exceeds text limit ({limits.max_chars})")
    sentences = sum(len(text_lines) for text_lines in lines)
    if sentences > limits.max_sentences:
        raise RequestError(400, f"Invalid request: {sentences} lines (sentences) exceed this server's limit of "
                                f"{limits.max_sentences} a request; send them in several requests")


async def _wait_unless_gone(future: asyncio.Future, request: Request) -> bool:
    """Wait for `future`; False (and the future left alone) if the client disconnects first."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    watch = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    return future in done
