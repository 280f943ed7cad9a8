"""What a request may be and how it is read: the limits, API keys, the body's size, the parameters (JSON or a
form), and the checks of each parameter that answer a bad one with a 4xx and LibreTranslate's `{"error": ...}`.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nmt.errors import NMTError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests are refused with a 4xx, not queued."""

    max_chars: int = 10_000  # characters of `q`, all its texts together
    max_sentences: int = 200  # sentences of `q`, all its texts together, as they are decoded (after splitting)
    max_alternatives: int = 3  # LibreTranslate's default limit
    max_file_bytes: int = 10 * 1024 * 1024  # an uploaded file (/translate_file)
    max_file_chars: int = 200_000  # the text of an uploaded file

    @property
    def max_body_bytes(self) -> int:
        """The largest body read: room for `max_chars` characters at their longest encoding (a
        4-byte character is 12 bytes percent-encoded in a form) plus the other parameters."""
        return 12 * self.max_chars + 64 * 1024

    def body_limit(self, path: str) -> int:
        """The largest body read for a request to `path`: a file upload's, or a text request's."""
        return self.max_file_bytes + 64 * 1024 if path.rstrip("/").endswith("/translate_file") else self.max_body_bytes


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


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 before reading it whole: at once when its
    Content-Length says so, else as soon as the bytes received pass the limit. (Starlette's own
    limit, new in 1.10, answers in plain text, not with LibreTranslate's `{"error": ...}`.)"""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.body_limit(scope.get("path", ""))
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            response = error(413 if declared.isdigit() else 400, f"Request body of {declared.decode('latin-1')} bytes "
                              f"is over this server's limit of {limit} bytes" if declared.isdigit() else
                              "Invalid request: bad Content-Length header")
            response.headers["Connection"] = "close"  # the unread body cannot be skipped on this connection
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
            return message
        await self.app(scope, limited, send)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_params(request: Request, limit: int, files: bool = False) -> dict[str, Any]:
    """The request's parameters: a JSON object, or a form's fields (URL-encoded or multipart) with the query's;
    with `files`, a multipart form's uploaded files too (as `UploadFile`s)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            params = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"Invalid JSON format: {exc}") from None
        except RecursionError:  # nesting deeper than the interpreter's stack
            raise RequestError(400, "Invalid JSON format: nested too deeply") from None
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
        params.update((key, value) for key, value in form.items() if isinstance(value, str) or
                      (files and isinstance(value, UploadFile)))
    elif await request.body():
        raise RequestError(415, f"Unsupported content type {content_type or '(none)'!r}: send JSON "
                                "(application/json) or a form (application/x-www-form-urlencoded)")
    return params


def check_key(params: dict[str, Any], api_keys: ApiKeys) -> None:
    key = params.get("api_key")
    if not key:
        raise RequestError(403, "Invalid request: missing api_key parameter; this server needs an API key, "
                                "ask its operator for one")
    if not isinstance(key, str) or not api_keys.allows(key):
        raise RequestError(403, "Invalid API key")


def texts_of(q: Any) -> tuple[list[str], bool]:
    """The texts of `q` and whether it was a list."""
    if q is None or q == "" or q == []:
        raise RequestError(400, "Invalid request: missing q parameter")
    if isinstance(q, str):
        return [q], False
    if isinstance(q, list) and all(isinstance(text, str) for text in q):
        return q, True
    raise RequestError(400, "Invalid request: q must be a string or a list of strings")


def alternatives_of(value: Any, limit: int) -> int:
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, "Invalid request: alternatives parameter is not a number") from None
    if not 0 <= number <= limit:
        raise RequestError(400, f"Invalid request: alternatives parameter must be between 0 and {limit}, got {number}")
    return number


def split_lines(text: str) -> list[str]:
    """A text's lines as `nmt translate` reads a file's: split on "\\n" only, a "\\r" before it dropped."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def check_chars(texts: list[str], limits: Limits) -> None:
    chars = sum(len(text) for text in texts)
    if chars > limits.max_chars:
        raise RequestError(400, f"Invalid request: request ({chars}) exceeds text limit ({limits.max_chars})")


def check_sentences(sentences: int, limits: Limits) -> None:
    if sentences > limits.max_sentences:
        raise RequestError(400, f"Invalid request: {sentences} sentences exceed this server's limit of "
                                f"{limits.max_sentences} a request; send them in several requests")
