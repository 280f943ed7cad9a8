"""Serving speed: `nmt serve` under 1, 8 and 32 concurrent clients, beside offline translation of the same sentences.

Each client sends one sentence a request (LibreTranslate's JSON API, one keep-alive connection per
client) and the next as soon as the answer comes; the sentences are shared out until all are sent.
Reported per level: sentences/s, p50/p95 latency, and how many answers differ from the offline
translation. Beside them, in a process of its own: `Translator.translate` of the whole list at once
(what `nmt translate` does with a file) and of each sentence alone (the in-process latency of one
sentence). With `--libretranslate PYTHON` (the interpreter of a virtual environment where
LibreTranslate is installed), the same load goes to LibreTranslate serving the model exported with
`nmt export --format argos`, at the same beam and in float32 (Argos' defaults are beam 4 and int8
on most CPUs). Its sentence splitter (MiniSBD) downloads a model at first use, which an offline
machine cannot, so it is replaced by one sentence per text: the inputs are single sentences anyway,
and it only takes work away from LibreTranslate.

    python bench/serve.py --model RUN_DIR --src DIR/test_2016_flickr.en.gz --libretranslate /path/venv/bin/python \\
        --json bench/serve_cpu.json

`--workload paragraphs` sends the same sentences joined 3-6 to a paragraph, one paragraph a request
(each server splits it into sentences: LibreTranslate with the same splitter as nmt, sentencex, in
place of MiniSBD); `--workload html` sends them as `<p>` elements with two inline tags each, with
`format: html`. Rates count the sentences decoded. The offline row then also gives the handling's
overhead: the paragraphs (or documents) translated, against the same sentences decoded as one list.

Loopback only: every request goes to 127.0.0.1, the counts are bounded, and the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

# The offline side, run in a child process so that its threads never share the CPU with a server.
OFFLINE = """
import json, sys, time, torch
from nmt import Translator
from nmt.documents.alignment import word_links
from nmt.documents.sentences import segmenter_for
from nmt.documents.translate import BlockJob, translate_documents, translate_paragraphs
from nmt.documents.html import HtmlDocument
lines, workload = json.load(open(sys.argv[2])), sys.argv[4]
translator = Translator.load(sys.argv[1], device="cpu")
segmenter = segmenter_for(translator)
def run(texts):
    if workload == "sentences":
        return translator.translate(texts)
    if workload == "paragraphs":
        return translate_paragraphs(texts, segmenter, translator.translate)
    return translate_documents([HtmlDocument(text) for text in texts], segmenter, translator.translate,
                               lambda pairs: word_links(translator, pairs))
# What the documents' handling costs beside the decoding: the same sentences decoded as one list, alone.
if workload == "sentences":
    sentences = lines
elif workload == "html":
    sentences = BlockJob([b for text in lines for b in HtmlDocument(text).blocks()], segmenter).sentences
else:
    sentences = [s for text in lines for s in segmenter.segment(text).sentences]
run(lines[:20])  # warm-up, untimed
rounds = []
for _ in range(2):  # alternated, the faster of each kept: the first pass over the data runs slower
    started = time.perf_counter()
    translator.translate(sentences)
    decoding = time.perf_counter() - started
    started = time.perf_counter()
    out = run(lines)
    rounds.append((time.perf_counter() - started, decoding))
seconds, decoding = min(r[0] for r in rounds), min(r[1] for r in rounds)
alone = []
for line in lines[:int(sys.argv[3])]:
    started = time.perf_counter()
    run([line])
    alone.append(time.perf_counter() - started)
print(json.dumps({"seconds": seconds, "decoding_seconds": decoding, "sentences": len(sentences),
                  "translations": out, "alone": alone}))
"""

# LibreTranslate with MiniSBD's sentence splitting replaced by one sentence per text (see above).
LIBRETRANSLATE = """
import sys
from argostranslate import sbd
if sys.argv.pop(1) == "split":  # paragraphs: the same splitter as nmt's, as MiniSBD cannot download its model here
    from sentencex import segment
    sbd.MiniSBDSentencizer.split_sentences = lambda self, text: [s.strip() for s in segment("en", text) if s.strip()]
else:
    sbd.MiniSBDSentencizer.split_sentences = lambda self, text: [text]
from libretranslate.main import main
sys.argv = ["libretranslate", *sys.argv[1:]]
main()
"""


INLINE = [("<b>", "</b>"), ("<i>", "</i>"), ('<a href="https://example.com/x?a=1&amp;b=2">', "</a>"), ("<em>", "</em>")]


def paragraphs(lines: list[str], html: bool, seed: int = 7) -> list[str]:
    """Consecutive sentences joined 3 to 6 at a time; as HTML, a <p> each with two inline tags around words."""
    import random

    rng, out, start = random.Random(seed), [], 0
    while start < len(lines):
        size = rng.randint(3, 6)
        text = " ".join(lines[start:start + size])
        start += size
        if html:
            words = text.split(" ")
            for _ in range(2):
                i = rng.randrange(len(words))
                j = min(len(words), i + rng.randint(1, 3))
                opening, closing = rng.choice(INLINE)
                if "<" not in " ".join(words[i:j]):
                    words[i:j] = [opening + " ".join(words[i:j]) + closing]
            text = "<p>" + " ".join(words).replace("&", "&amp;").replace("&amp;amp;", "&amp;") + "</p>"
        out.append(text)
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def load(port: int, lines: list[str], clients: int, source: str, target: str, format: str = "text",
         sentences: Optional[int] = None) -> dict:
    """Send every line once, `clients` at a time; return sentences/s, latencies and the answers."""
    answers: list[Optional[str]] = [None] * len(lines)
    latencies: list[float] = []
    by_line: list[float] = [0.0] * len(lines)
    next_line = iter(range(len(lines)))
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while True:
                with lock:
                    index = next(next_line, None)
                if index is None:
                    return
                body = json.dumps({"q": lines[index], "source": source, "target": target, "format": format})
                started = time.perf_counter()
                connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    by_line[index] = took
                    if response.status == 200:
                        answers[index] = json.loads(data)["translatedText"]
                    else:
                        errors.append(f"{response.status} {data[:200]!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"clients": clients, "sentences_per_s": round((sentences or len(lines)) / seconds, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1), "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
            "errors": len(errors), "first_error": errors[0] if errors else None, "answers": answers, "by_line": by_line}


def wait_for(port: int, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/languages")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not answer in time")


def run_levels(name: str, port: int, lines: list[str], offline: list[str], levels: list[int], source: str,
               target: str, alone: int, batches: Optional[list[int]] = None, format: str = "text",
               sentences: Optional[int] = None) -> list[dict]:
    """Each level's row; `batches`, when given, fills with the server's batch sizes as it logs them.
    With one client, also the p50 latency of the first `alone` sentences, which were timed in-process."""
    load(port, lines[:20], 1, source, target, format)  # warm-up, untimed
    rows = []
    for clients in levels:
        seen = len(batches) if batches is not None else 0
        row = load(port, lines, clients, source, target, format, sentences)
        answers, by_line = row.pop("answers"), row.pop("by_line")
        if clients == 1:
            row[f"p50_ms_first_{alone}"] = round(1000 * statistics.median(by_line[:alone]), 1)
        row["differ_from_offline"] = sum(a != b for a, b in zip(answers, offline))
        if batches is not None:
            time.sleep(0.5)  # the last log lines
            sizes = batches[seen:]
            row["mean_batch_sentences"] = round(sum(sizes) / max(1, len(sizes)), 1)
        print(f"{name}: {json.dumps(row)}", file=sys.stderr)
        rows.append({"engine": name, **row})
    return rows


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve_nmt(args: argparse.Namespace, lines: list[str], offline: list[str], pair: tuple[str, str]) -> list[dict]:
    # -v: the server logs each batch's size ("decoded N sentences"), which the rows report.
    command = [sys.executable, "-m", "nmt_cli.main", "-v", "serve", "--model", str(args.model), "--port", "0",
               "--device", "cpu", *(["--quantize", args.quantize] if args.quantize else [])]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise SystemExit(f"nmt serve did not start (exit code {process.wait()})")
        batches: list[int] = []

        def read_log() -> None:  # also keeps the pipe from filling
            for line in process.stderr:
                found = re.search(r"decoded (\d+) sentences", line)
                if found:
                    batches.append(int(found.group(1)))
        threading.Thread(target=read_log, daemon=True).start()
        wait_for(port, process)
        return run_levels("nmt serve", port, lines, offline, args.clients, *pair, args.alone, batches=batches,
                          format=args.format, sentences=args.decoded)
    finally:
        stop(process)


def serve_libretranslate(args: argparse.Namespace, lines: list[str], offline: list[str], pair: tuple[str, str],
                         work: Path, beam: int) -> list[dict]:
    from nmt.export import export_argos

    package = export_argos(args.model, work / "model.argosmodel")
    env = {**os.environ, "ARGOS_PACKAGES_DIR": str(work / "argos" / "packages"), "ARGOS_BEAM_SIZE": str(beam),
           "ARGOS_COMPUTE_TYPE": "float32", "ARGOS_DEVICE_TYPE": "cpu", "HOME": str(work / "home"),
           **({"ARGOS_INTRA_THREADS": str(args.threads)} if args.threads else {}),
           **{f"XDG_{kind}_HOME": str(work / "argos" / kind.lower()) for kind in ("DATA", "CONFIG", "CACHE")}}
    subprocess.run([args.libretranslate, "-c", "import sys; from argostranslate import package; "
                    "package.install_from_path(sys.argv[1])", str(package)], env=env, check=True)
    port = args.libretranslate_port
    split = "split" if args.workload != "sentences" else "whole"
    process = subprocess.Popen([args.libretranslate, "-c", LIBRETRANSLATE, split, "--host", "127.0.0.1", "--port", str(port),
                                "--load-only", ",".join(pair), "--disable-web-ui", "--disable-files-translation"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, process)
        return run_levels("LibreTranslate", port, lines, offline, args.clients, *pair, args.alone, format=args.format,
                          sentences=args.decoded)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="run directory (post-norm, for the Argos export)")
    parser.add_argument("--src", type=Path, required=True, help="source sentences (test_2016_flickr)")
    parser.add_argument("--sentences", type=int, default=1000, help="sentences sent at each level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per level")
    parser.add_argument("--alone", type=int, default=200, help="sentences translated one at a time in-process")
    parser.add_argument("--threads", type=int, default=None, help="threads of every engine (OMP_NUM_THREADS for "
                        "nmt, ARGOS_INTRA_THREADS for LibreTranslate); default: each engine's own")
    parser.add_argument("--quantize", default=None, help="int8: nmt serve --quantize int8 (offline too)")
    parser.add_argument("--libretranslate", default=None, help="python of an environment with LibreTranslate")
    parser.add_argument("--libretranslate-port", type=int, default=5123, help="loopback port for LibreTranslate")
    parser.add_argument("--workload", choices=["sentences", "paragraphs", "html"], default="sentences",
                        help="one sentence a request; paragraphs of 3-6 consecutive sentences; the same paragraphs "
                        "as HTML with inline tags")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    args.format = "html" if args.workload == "html" else "text"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the offline child and nmt serve

    from nmt import Translator
    from nmt.data import read_lines

    lines = [line.strip() for line in read_lines(args.src) if line.strip()][:args.sentences]
    if args.workload != "sentences":
        lines = paragraphs(lines, html=args.workload == "html")
    translator = Translator.load(args.model, device="cpu")
    pair, beam = (translator.config.data.src_lang, translator.config.data.tgt_lang), translator.config.decode.beam
    del translator
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work_dir:
        work = Path(work_dir)
        (work / "lines.json").write_text(json.dumps(lines))
        script = OFFLINE if not args.quantize else OFFLINE.replace('device="cpu"', f'device="cpu", quantize="{args.quantize}"')
        done = subprocess.run([sys.executable, "-c", script, str(args.model), str(work / "lines.json"), str(args.alone),
                               args.workload], capture_output=True, text=True, check=True)
        found = json.loads(done.stdout.splitlines()[-1])
        args.decoded = found["sentences"]  # what the rates count: sentences decoded, whatever the request holds
        offline = found["translations"]
        rows = [{"engine": "offline Translator.translate (nmt translate)", "sentences_per_s":
                 round(found["sentences"] / found["seconds"], 1),
                 "decoding_alone_seconds": round(found["decoding_seconds"], 2), "seconds": round(found["seconds"], 2),
                 "handling_overhead": round(found["seconds"] / found["decoding_seconds"] - 1, 3)},
                {"engine": f"in-process, one {'sentence' if args.workload == 'sentences' else 'paragraph'} at a time "
                           f"(first {len(found['alone'])})",
                 "clients": 1, "sentences_per_s": round(len(found["alone"]) / sum(found["alone"]), 1),
                 "p50_ms": round(1000 * statistics.median(found["alone"]), 1),
                 "p95_ms": round(1000 * percentile(found["alone"], 0.95), 1)}]
        print(json.dumps(rows), file=sys.stderr)
        rows += serve_nmt(args, lines, offline, pair)
        if args.libretranslate:
            rows += serve_libretranslate(args, lines, offline, pair, work, beam)
    offline_rate = rows[0]["sentences_per_s"]
    for row in rows:
        row["ratio_to_offline"] = round(row["sentences_per_s"] / offline_rate, 2)
    result = {"machine": f"{os.cpu_count()} CPU cores ({platform.machine()})", "date": time.strftime("%Y-%m-%d"),
              "model": str(args.model), "workload": args.workload, "requests": len(lines),
              "sentences": args.decoded, "beam": beam, "quantize": args.quantize,
              "threads": args.threads, "load_average": os.getloadavg(), "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
