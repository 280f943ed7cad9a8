"""`nmt serve`: LibreTranslate's API and client, batching across requests, refusals, disconnects, shutdown."""

from __future__ import annotations

import http.client
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from conftest import TINY, toy_pairs, write_pair
from nmt import Translator
from nmt.errors import NMTError

uvicorn = pytest.importorskip("uvicorn")
from nmt.serve import ApiKeys, DecodingLoop, Limits, Pair, bind, create_app, load_pairs  # noqa: E402


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny xx-yy model trained briefly on the toy pair: sure of its outputs, so they mean something."""
    from nmt.config import load_config
    from nmt.pipeline import train

    root = tmp_path_factory.mktemp("serve")
    write_pair(root / "train", *toy_pairs(2000, seed=1))
    config = load_config(None, [*TINY, f"data.train={root / 'train'}", "train.max_steps=300", "train.valid_every=1000",
                                "train.save_every=1000"])
    train(config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def translator(toy_model: Path) -> Translator:
    return Translator.load(toy_model, device="cpu")


class Server:
    """The app on uvicorn in a thread, listening on a free loopback port."""

    def __init__(self, translators: list[Translator], limits: Limits = Limits(), keys: Optional[ApiKeys] = None,
                 max_tokens: Optional[int] = None, pairs: Optional[list[Pair]] = None) -> None:
        self.pairs = pairs or [Pair(t.config.data.src_lang, t.config.data.tgt_lang, DecodingLoop(t, max_tokens))
                               for t in translators]
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.pairs, limits, keys), log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: Optional[dict[str, str]] = None) -> tuple[int, Any]:
        """(status, decoded JSON answer); a dict body goes as JSON, a str as a URL-encoded form."""
        headers = dict(headers or {})
        if isinstance(body, dict):
            body, headers["Content-Type"] = json.dumps(body), "application/json"
        elif isinstance(body, str):
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def translate(self, q: Any, **params: Any) -> tuple[int, Any]:
        return self.request("POST", "/translate", {"q": q, "source": "xx", "target": "yy", **params})


@pytest.fixture
def server(translator: Translator) -> Iterator[Server]:
    running = Server([translator])
    yield running
    running.stop()


def sentences(n: int, seed: int) -> list[str]:
    return toy_pairs(n, seed)[0]


def test_libretranslate_client_gets_what_translate_gives(server: Server, translator: Translator) -> None:
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(server.url)
    lines = sentences(6, seed=11)
    offline = translator.translate(lines)
    assert client.translate(lines[0], "xx", "yy") == offline[0]
    # Several sentences in one text, one a line (the client sends forms, which hold strings only).
    assert client.translate("\n".join(lines), "xx", "yy") == "\n".join(offline)
    assert client.languages() == [{"code": "xx", "name": "xx", "targets": ["yy"]},
                                  {"code": "yy", "name": "yy", "targets": []}]
    # Lists go as JSON, as LibreTranslate takes them; empty lines stay empty, line breaks are kept.
    status, answer = server.translate([lines[1], "", f"{lines[2]}\r\n{lines[3]}\n"])
    assert status == 200 and answer == {"translatedText": [offline[1], "", f"{offline[2]}\n{offline[3]}\n"]}
    assert server.request("GET", "/health") == (200, {"status": "ok"})


def test_alternatives_come_from_the_nbest_list(server: Server, translator: Translator) -> None:
    line = sentences(1, seed=12)[0]
    status, answer = server.translate(line, alternatives=2)
    nbest = [text for text, _ in translator.translate_nbest([line], 3, beam=3)[0]]
    assert status == 200 and answer["translatedText"] == nbest[0]
    assert answer["alternatives"] == [t for t in dict.fromkeys(nbest[1:]) if t != nbest[0]]
    status, answer = server.translate([line, line], alternatives=1)
    assert status == 200 and len(answer["alternatives"]) == 2 and answer["alternatives"][0] == answer["alternatives"][1]


def test_api_keys_are_required_compared_and_never_logged(translator: Translator, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from libretranslatepy import LibreTranslateAPI

    keys = tmp_path / "keys"
    keys.write_text("# one a line\nsecret-one\n\nsecret-two\n")
    running = Server([translator], keys=ApiKeys.load(keys))
    try:
        with caplog.at_level("DEBUG"):
            line = sentences(1, seed=13)[0]
            assert LibreTranslateAPI(running.url, api_key="secret-two").translate(line, "xx", "yy") == \
                translator.translate([line])[0]
            with pytest.raises(urllib.error.HTTPError) as refused:
                LibreTranslateAPI(running.url).translate(line, "xx", "yy")
            assert refused.value.code == 403 and "api_key" in json.loads(refused.value.read())["error"]
            status, answer = running.request("POST", "/translate?api_key=secret-guess", f"q={line}&source=xx&target=yy")
            assert status == 403 and answer == {"error": "Invalid API key"}
            assert running.request("GET", "/languages")[0] == 200  # as LibreTranslate: only /translate needs a key
        assert "secret" not in caplog.text
    finally:
        running.stop()
    empty = tmp_path / "empty"
    empty.write_text("# none yet\n")
    with pytest.raises(NMTError, match="no keys"):
        ApiKeys.load(empty)


def test_many_concurrent_clients_get_the_offline_translation(server: Server, translator: Translator) -> None:
    """32 clients x 20 requests, single sentences and lists, on loopback: no errors, and every
    answer is what translating all the lines as one file gives."""
    lines = sentences(120, seed=14)
    offline = dict(zip(lines, translator.translate(lines)))

    def client(number: int) -> list[str]:
        rng, problems = random.Random(number), []
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)  # one keep-alive connection
        try:
            for _ in range(20):
                q: Any = rng.choice(lines) if rng.random() < 0.5 else rng.sample(lines, rng.randint(2, 5))
                connection.request("POST", "/translate", json.dumps({"q": q, "source": "xx", "target": "yy"}),
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                expected = offline[q] if isinstance(q, str) else [offline[line] for line in q]
                if response.status != 200 or answer.get("translatedText") != expected:
                    problems.append(f"{q!r}: {response.status} {answer}")
        finally:
            connection.close()
        return problems

    with ThreadPoolExecutor(32) as pool:
        problems = [p for found in pool.map(client, range(32)) for p in found]
    assert problems == []
    loop = server.pairs[0].loop
    assert loop.sentences > loop.batches  # sentences of several requests were decoded together


def form(**fields: str) -> str:
    from urllib.parse import urlencode

    return urlencode(fields)


BAD_REQUESTS = [
    # (body, extra headers, status, a piece of the message)
    ('{"q": "ka", "source": ', {"Content-Type": "application/json"}, 400, "Invalid JSON"),
    ('["ka"]', {"Content-Type": "application/json"}, 400, "must be an object"),
    ({"source": "xx", "target": "yy"}, None, 400, "missing q"),
    ({"q": "", "source": "xx", "target": "yy"}, None, 400, "missing q"),
    ({"q": "ka", "target": "yy"}, None, 400, "missing source"),
    (form(q="ka", source="xx"), None, 400, "missing target"),
    ({"q": "ka", "source": "xx", "target": "de"}, None, 400, "xx to de is not supported"),
    ({"q": "ka", "source": "auto", "target": "yy"}, None, 400, "source: auto"),
    ({"q": ["ka", 3], "source": "xx", "target": "yy"}, None, 400, "list of strings"),
    ({"q": {"text": "ka"}, "source": "xx", "target": "yy"}, None, 400, "list of strings"),
    ({"q": "ka" * 60, "source": "xx", "target": "yy"}, None, 400, "exceeds text limit (100)"),
    ({"q": ["ka"] * 4 + ["lu\nmi"], "source": "xx", "target": "yy"}, None, 400, "6 sentences"),
    ({"q": "ka", "source": "xx", "target": "yy", "alternatives": "two"}, None, 400, "not a number"),
    ({"q": "ka", "source": "xx", "target": "yy", "alternatives": 4}, None, 400, "between 0 and 3"),
    ({"q": "ka", "source": "xx", "target": "yy", "format": "xml"}, None, 400, "format must be text or html"),
    ("q=ka", {"Content-Type": "text/plain"}, 415, "Unsupported content type"),
    ("x" * (Limits(max_chars=100).max_body_bytes + 1), {"Content-Type": "application/x-www-form-urlencoded"}, 413,
     "limit"),
]


@pytest.mark.parametrize("body,headers,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_message(translator: Translator, body: Any, headers: Optional[dict],
                                               status: int, message: str) -> None:
    running = Server([translator], Limits(max_chars=100, max_sentences=5))
    try:
        found, answer = running.request("POST", "/translate", body, headers)
        assert found == status and message in answer["error"], answer
        assert running.translate("ka lu")[0] == 200  # and the server goes on serving
    finally:
        running.stop()


def test_oversized_bodies_are_refused_before_they_are_read(server: Server) -> None:
    limit = Limits().max_body_bytes
    # Declared too large: refused at once, though not a byte of the body has been sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {limit + 1}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b'"error"' in answer
    # Sent in chunks with no declared length: refused once the bytes received pass the limit.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"q=" + b"k" * 65536 for _ in range(limit // 65536 + 2))
    try:
        connection.request("POST", "/translate", body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close the connection before the client has sent every chunk
    finally:
        connection.close()
    for path, method, status in (("/nowhere", "GET", 404), ("/translate", "GET", 405)):
        found, answer = server.request(method, path)
        assert found == status and "error" in answer
    assert server.translate("ka lu")[0] == 200


def test_a_client_that_leaves_costs_only_its_sentences(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the loop decodes one request, a second client queues 50 sentences and hangs up: they are never decoded."""
    entered, release = threading.Event(), threading.Event()
    decode = translator.translate_mixed

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)
        return decode(*args, **kwargs)
    monkeypatch.setattr(translator, "translate_mixed", held)
    running = Server([translator])
    loop = running.pairs[0].loop
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(running.translate, "ka lu")
            assert entered.wait(30)  # the first request is being decoded
            deadline = time.monotonic() + 30
            leaving = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
            leaving.request("POST", "/translate", json.dumps({"q": sentences(50, seed=15), "source": "xx",
                                                              "target": "yy"}), {"Content-Type": "application/json"})
            while loop.pending < 50:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            leaving.close()  # hang up before the answer
            while loop.pending:  # the server notices, and drops the 50 sentences from the queue
                assert time.monotonic() < deadline
                time.sleep(0.01)
            release.set()
            assert first.result(timeout=60)[0] == 200
        assert loop.sentences == 1
    finally:
        release.set()
        running.stop()


def test_several_models_serve_several_pairs(toy_model: Path, untrained_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "zz-yy"
    other.mkdir()
    for item in untrained_model.iterdir():
        (other / item.name).symlink_to(item)
    (other / "config.yaml").unlink()
    text = (untrained_model / "config.yaml").read_text(encoding="utf-8")
    (other / "config.yaml").write_text(re.sub(r"src_lang: xx", "src_lang: zz", text), encoding="utf-8")
    pairs = load_pairs([toy_model, other], device="cpu")
    assert [(p.source, p.target) for p in pairs] == [("xx", "yy"), ("zz", "yy")]
    running = Server([p.loop.translator for p in pairs])
    try:
        status, languages = running.request("GET", "/languages")
        assert status == 200 and [(entry["code"], entry["targets"]) for entry in languages] == \
            [("xx", ["yy"]), ("yy", []), ("zz", ["yy"])]
        status, answer = running.request("POST", "/translate", {"q": "ka lu", "source": "zz", "target": "yy"})
        assert status == 200 and answer["translatedText"] == pairs[1].loop.translator.translate(["ka lu"])[0]
    finally:
        running.stop()
    with pytest.raises(NMTError, match="both translate xx to yy"):
        load_pairs([toy_model, untrained_model], device="cpu")


def start_cli_server(model: Path, *options: str) -> tuple[subprocess.Popen, int]:
    # SIGINT as a terminal leaves it: a shell starts background jobs with SIGINT ignored, and a test
    # run started from one would otherwise pass that on, so Ctrl-C could not end the server with 130.
    process = subprocess.Popen([sys.executable, "-m", "nmt_cli.main", "serve", "--model", str(model), "--port", "0",
                                "--device", "cpu", *options], stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"serving xx-yy on http://127\.0\.0\.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
    raise AssertionError(f"the server did not start (exit code {process.wait()})")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_answer_the_requests_in_flight_then_exit(toy_model: Path, stop: signal.Signals) -> None:
    # Small batches make the 200-line request take a while, so the signal comes while it is decoded.
    process, port = start_cli_server(toy_model, "--max-batch-tokens", "20")
    lines = sentences(200, seed=16)
    expected = Translator.load(toy_model, device="cpu").translate(lines)
    try:
        with ThreadPoolExecutor(1) as pool:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("POST", "/translate", json.dumps({"q": lines, "source": "xx", "target": "yy"}),
                               {"Content-Type": "application/json"})
            answer = pool.submit(lambda: (lambda r: (r.status, json.loads(r.read())))(connection.getresponse()))
            time.sleep(0.5)
            process.send_signal(stop)
            assert answer.result(timeout=120) == (200, {"translatedText": expected})
        code = process.wait(timeout=60)
        log = process.stderr.read() if process.stderr else ""
        assert "Waiting for connections to close" in log  # the request was still in flight at the signal
        assert code == (-signal.SIGTERM if stop == signal.SIGTERM else 130), log
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_refuses_bad_options_in_one_line(toy_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nmt_cli.main import app

    runner = CliRunner()
    assert "--api-keys" in runner.invoke(app, ["serve", "--help"]).output
    missing = runner.invoke(app, ["serve", "--model", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "config.yaml" in missing.stderr and "Traceback" not in missing.output
    no_keys = runner.invoke(app, ["serve", "--model", str(toy_model), "--api-keys", str(tmp_path / "keys")])
    assert no_keys.exit_code == 1 and "--api-keys" in no_keys.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = runner.invoke(app, ["serve", "--model", str(toy_model), "--port", str(taken.getsockname()[1]),
                                   "--device", "cpu"])
    assert busy.exit_code == 1 and "cannot listen" in busy.stderr
