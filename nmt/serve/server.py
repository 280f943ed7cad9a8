"""Start the HTTP server: load the models, listen, serve with uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from typing import Optional, Sequence

from nmt.errors import ConfigError, NMTError
from nmt.languages import short_codes
from nmt.translator import Translator
from nmt.serve.api import Pair, create_app
from nmt.serve.params import ApiKeys, Limits
from nmt.serve.batching import DecodingLoop

log = logging.getLogger("nmt.serve")


def load_pairs(model_dirs: Sequence[Path], device: str = "auto", quantize: Optional[str] = None,
               max_batch_tokens: Optional[int] = None) -> list[Pair]:
    """A decoding loop (not started yet) for each model, keyed by its language pair (data.src_lang, data.tgt_lang)."""
    if not model_dirs:
        raise ConfigError("give at least one --model DIR to serve")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ConfigError(f"--max-batch-tokens must be >= 1, got {max_batch_tokens}")
    pairs: dict[tuple[str, str], tuple[Path, Pair]] = {}
    for model_dir in model_dirs:
        translator = Translator.load(model_dir, device, quantize)
        loop = DecodingLoop(translator, max_batch_tokens, name=f"decode-{Path(model_dir).name}")
        for source, target, languages in _directions(translator):
            if (source, target) in pairs:
                raise ConfigError(f"--model {pairs[(source, target)][0]} and --model {model_dir} both translate "
                                  f"{source} to {target}; serve one of them")
            pairs[(source, target)] = (Path(model_dir), Pair(source, target, loop, languages))
    return [pair for _, pair in pairs.values()]


def _directions(translator: Translator) -> list[tuple[str, str, tuple[Optional[str], Optional[str]]]]:
    """The (source, target) codes a model serves, with its own codes of them: one pair (data.src_lang and
    data.tgt_lang), or for a model with language tags every direction its tags allow, named as
    LibreTranslate's clients name languages where a short code stands for one alone (`short_codes`)."""
    data, tokenizer = translator.config.data, translator.tokenizer
    if tokenizer.language_tags == "none":
        return [(data.src_lang, data.tgt_lang, (None, None))]
    if data.pairs:  # a multilingual model of nmt's: the directions it was trained on
        pairs = [pair.split("-") for pair in data.pairs]
        short = short_codes(list(dict.fromkeys(code for pair in pairs for code in pair)))
        return [(short[s], short[t], (s, t)) for s, t in pairs]
    codes = tokenizer.languages()
    short = short_codes(codes)
    if tokenizer.language_tags == "target_in_source":  # one source language, a tag per target
        source = short_codes([data.src_lang])[data.src_lang]
        return [(source, short[code], (data.src_lang, code)) for code in codes]
    return [(short[s], short[t], (s, t)) for s in codes for t in codes if s != t]


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free port), or an NMTError saying why not."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise NMTError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise NMTError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(model_dirs: Sequence[Path], host: str = "127.0.0.1", port: int = 5000, api_keys: Optional[Path] = None,
          device: str = "auto", quantize: Optional[str] = None, max_batch_tokens: Optional[int] = None,
          limits: Limits = Limits(), split_sentences: bool = True) -> None:
    """Serve the models over LibreTranslate's API until SIGTERM or Ctrl-C, which stop taking new
    connections, answer the requests in flight, then return (a second Ctrl-C stops at once).
    `split_sentences` translates each line of a text as a paragraph of sentences (LibreTranslate's way)."""
    import uvicorn

    if limits.max_chars < 1 or limits.max_sentences < 1:
        raise ConfigError(f"--max-chars and --max-sentences must be >= 1, got {limits.max_chars} and "
                          f"{limits.max_sentences}")
    keys = ApiKeys.load(api_keys) if api_keys is not None else None  # before the slow part: loading the models
    pairs = load_pairs(model_dirs, device, quantize, max_batch_tokens)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    if not _is_loopback(host):
        log.warning("listening on %s: anyone who can reach this machine can use the server%s", host,
                    "" if keys else "; --api-keys FILE lets in only the holders of a key")
    server = uvicorn.Server(uvicorn.Config(create_app(pairs, limits, keys, split_sentences), log_config=None, access_log=False,
                                           lifespan="on", server_header=False))
    url_host = f"[{bound_host}]" if sock.family == socket.AF_INET6 else bound_host
    log.info("serving %s on http://%s:%d (Ctrl-C or SIGTERM: finish the requests in flight, then stop)",
             ", ".join(f"{p.source}-{p.target}" for p in pairs) if len(pairs) <= 12 else f"{len(pairs):,} language pairs",
             url_host, bound_port)
    server.run(sockets=[sock])
