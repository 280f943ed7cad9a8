"""Sentence splitters for paragraphs before translation: accuracy and speed of the candidates.

Candidates, all offline and without models to download: sentencex (Wikimedia, Rust), pysbd
(rule-based, Python), sentence-splitter (Moses' non-breaking prefixes, Python) and blingfire
(Microsoft, one language-independent model compiled into its library). Per candidate and per
language (en, de, fr, cs) it measures:

- the hand-written paragraphs in tests/data/boundaries/LANG.txt (one sentence a line, paragraphs
  separated by a blank line; the paragraph is its lines joined with one space): the share of
  paragraphs split exactly into their gold sentences, and boundary precision and recall;
- Multi30k paragraphs: consecutive sentences of DATA/train.LANG.gz joined 3-6 at a time (sizes
  drawn with a fixed seed, so the four languages get the same grouping) with one space. A caption
  that does not end in . ! ? (or one of them and closing quotes/brackets) first gets a "." appended:
  without an end mark there is no boundary for any splitter to find. Some captions hold two
  sentences in one line; a splitter that splits them is counted wrong, as the gold is the line;
- speed: sentences per second splitting all the Multi30k paragraphs in this one process
  (time.perf_counter, best of --rounds, after an untimed warm-up; splitter objects built first).

Sentences are compared with gold after stripping whitespace at their ends (`exact`); sentence-splitter
also turns runs of spaces inside a sentence into one, so `exact_inner_whitespace_ignored` is given
too (the boundary scores never count whitespace). pysbd has no Czech rules: Czech runs
with its English rules (`pysbd`), and, as an extra row, with its Slovak ones (`pysbd[cs=sk]`).
`sentencex+rule` is sentencex with one post-processing rule: never split after an initial
(see `no_split_after_initial`).

    python bench/splitters.py --data recipes/data/multi30k --json bench/splitters_cpu.json
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

LANGS = ("en", "de", "fr", "cs")
HERE = Path(__file__).resolve().parent
BOUNDARIES = HERE.parent / "tests" / "data" / "boundaries"
# An end mark, then any closing quotes or brackets.
END_MARK = re.compile(r"[.!?][\"'”“»«’‘)\]]*$")

Splitter = Callable[[str], list[str]]


# --- candidates -------------------------------------------------------------------------------

def make_sentencex(lang: str) -> Splitter:
    import sentencex

    return lambda text: sentencex.segment(lang, text)


def make_pysbd(lang: str) -> Splitter:
    import pysbd

    segmenter = pysbd.Segmenter(language=lang, clean=False)
    return segmenter.segment


def make_sentence_splitter(lang: str) -> Splitter:
    from sentence_splitter import SentenceSplitter

    return SentenceSplitter(language=lang).split


def make_blingfire(lang: str) -> Splitter:
    import blingfire

    # One model for every language; the sentences come back joined by newlines.
    return lambda text: blingfire.text_to_sentences(text).split("\n")


# An initial: one capital letter and a dot, standing as a word (at the start or after a space)
# and not after a number. J. R. R. Tolkien, John F. Kennedy, C. S. Lewis, French M. Dupont (M. is
# "Monsieur"). In none of the four languages does a sentence end in such a word, except when it
# names a letter ("the bus A.", "Plan B."). After a number the letter is a unit ("19 h.", "5 V."),
# which can end a sentence; glued to what comes before it ("U.S.", "Wall-E.") it is left alone.
INITIAL = re.compile(r"(?:^|(?<!\d)\s)([^\W\d_])\.\s*$")


def no_split_after_initial(sentences: list[str]) -> list[str]:
    """Join a sentence that ends in an initial ("J.", "M.") to the one after it."""
    out: list[str] = []
    for s in sentences:
        m = INITIAL.search(out[-1]) if out else None
        if m and m.group(1).isupper():
            out[-1] += s
        else:
            out.append(s)
    return out


def make_sentencex_rule(lang: str) -> Splitter:
    split = make_sentencex(lang)
    return lambda text: no_split_after_initial(split(text))


CANDIDATES: dict[str, dict] = {
    "sentencex": {"dist": "sentencex", "make": make_sentencex, "lang": {}},
    "pysbd": {"dist": "pysbd", "make": make_pysbd, "lang": {"cs": "en"}},
    "sentence-splitter": {"dist": "sentence-splitter", "make": make_sentence_splitter, "lang": {}},
    "blingfire": {"dist": "blingfire", "make": make_blingfire, "lang": {}},
    "sentencex+rule": {"dist": "sentencex", "make": make_sentencex_rule, "lang": {}},
    "pysbd[cs=sk]": {"dist": "pysbd", "make": make_pysbd, "lang": {"cs": "sk"}, "only": ("cs",)},
}


# --- data -------------------------------------------------------------------------------------

def read_boundaries(lang: str, root: Path = BOUNDARIES) -> list[list[str]]:
    """Paragraphs of gold sentences: one sentence a line, a blank line between paragraphs."""
    text = (root / f"{lang}.txt").read_text(encoding="utf-8")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        sentences = [line.strip() for line in block.splitlines() if line.strip()]
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def with_end_mark(sentence: str) -> str:
    return sentence if END_MARK.search(sentence) else sentence + "."


def multi30k_paragraphs(path: Path, seed: int, low: int = 3, high: int = 6) -> tuple:
    """Consecutive captions joined `low`-`high` at a time; returns the paragraphs and, per paragraph,
    how many of its captions were given a '.'."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    rng = random.Random(seed)
    paragraphs, appended, i = [], [], 0
    while i < len(lines):
        size = rng.randint(low, high)
        group = [s for s in lines[i:i + size] if s]
        i += size
        if len(group) < low:
            continue
        paragraphs.append([with_end_mark(s) for s in group])
        appended.append(sum(not END_MARK.search(s) for s in group))
    return paragraphs, appended


# --- scoring ----------------------------------------------------------------------------------

def _cuts(sentences: list[str]) -> tuple:
    """Boundary positions counted in non-whitespace characters, and the text without whitespace."""
    cuts, n, parts = set(), 0, []
    for s in sentences[:-1]:
        squeezed = "".join(s.split())
        n += len(squeezed)
        parts.append(squeezed)
        cuts.add(n)
    parts.append("".join(sentences[-1].split()) if sentences else "")
    return cuts, "".join(parts)


def score(golds: list[list[str]], preds: list[list[str]], keep_failures: int) -> dict:
    exact = loose = tp = n_pred = n_gold = altered = over = under = 0
    failures = []
    for gold, pred in zip(golds, preds):
        pred = [s.strip() for s in pred if s.strip()]
        g_cuts, g_text = _cuts(gold)
        p_cuts, p_text = _cuts(pred)
        if p_text != g_text:  # the splitter changed the characters: no boundary of it counts
            altered += 1
            p_cuts = set()
        ok = pred == gold
        exact += ok
        # the same sentences once runs of whitespace inside them are made one space
        loose += ok or [" ".join(s.split()) for s in pred] == [" ".join(s.split()) for s in gold]
        tp += len(g_cuts & p_cuts)
        n_pred += len(p_cuts)
        n_gold += len(g_cuts)
        over += bool(p_cuts - g_cuts)
        under += bool(g_cuts - p_cuts)
        if not ok and len(failures) < keep_failures:
            failures.append({"gold": gold, "split": pred})
    n = len(golds)
    return {
        "paragraphs": n, "exact": exact, "exact_share": exact / n if n else 0.0,
        "exact_inner_whitespace_ignored": loose,
        "boundary_precision": tp / n_pred if n_pred else 1.0,
        "boundary_recall": tp / n_gold if n_gold else 1.0,
        "gold_boundaries": n_gold, "predicted_boundaries": n_pred,
        "paragraphs_with_extra_split": over, "paragraphs_with_missed_boundary": under,
        "paragraphs_text_altered": altered, "failures": failures,
    }


# --- environment ------------------------------------------------------------------------------

def environment() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for dist in sorted({c["dist"] for c in CANDIDATES.values()}):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": model, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f")} | {"amx": any(f.startswith("amx") for f in flags)},
        "python": platform.python_version(), "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
    }


# --- main -------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Multi30k directory with train.LANG.gz")
    parser.add_argument("--boundaries", type=Path, default=BOUNDARIES, help="hand-written paragraphs (LANG.txt)")
    parser.add_argument("--langs", nargs="+", default=list(LANGS))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the Multi30k paragraphs; the best counts")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N Multi30k paragraphs (0: all)")
    parser.add_argument("--failures", type=int, default=25, help="failing paragraphs kept in the JSON per set")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    env = environment()
    results = {"environment": env, "seed": args.seed, "rounds": args.rounds, "languages": {}}
    rows = []
    for lang in args.langs:
        hand = read_boundaries(lang, args.boundaries)
        m30k, appended = multi30k_paragraphs(args.data / f"train.{lang}.gz", args.seed)
        if args.limit:
            m30k, appended = m30k[:args.limit], appended[:args.limit]
        m30k_texts = [" ".join(p) for p in m30k]
        hand_texts = [" ".join(p) for p in hand]
        n_sentences = sum(len(p) for p in m30k)
        lang_result = {
            "hand": {"paragraphs": len(hand), "sentences": sum(len(p) for p in hand)},
            "multi30k": {"file": f"train.{lang}.gz", "paragraphs": len(m30k), "sentences": n_sentences,
                         "captions_given_a_period": sum(appended)},
            "candidates": {},
        }
        for name in args.candidates:
            spec = CANDIDATES[name]
            if lang not in spec.get("only", LANGS):
                continue
            code = spec["lang"].get(lang, lang)
            split = spec["make"](code)
            for text in m30k_texts[:50]:  # warm-up, untimed
                split(text)
            times, m30k_pred = [], None
            for _ in range(max(1, args.rounds)):
                started = time.perf_counter()
                out = [split(text) for text in m30k_texts]
                times.append(time.perf_counter() - started)
                m30k_pred = m30k_pred or out
            hand_pred = [split(text) for text in hand_texts]
            entry = {
                "language_code": code,
                "hand": score(hand, hand_pred, keep_failures=len(hand)),
                "multi30k": score(m30k, m30k_pred, keep_failures=args.failures),
                "seconds": times, "sentences_per_s": n_sentences / min(times),
            }
            lang_result["candidates"][name] = entry
            rows.append((name, lang, code, entry))
        results["languages"][lang] = lang_result

    print(f"{env['cpu']} ({env['cpu_count']} CPUs, flags {env['cpu_flags']}), Python {env['python']}, {env['date']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    for lang in args.langs:
        r = results["languages"][lang]
        print(f"{lang}: hand-written {r['hand']['paragraphs']} paragraphs / {r['hand']['sentences']} sentences; "
              f"Multi30k {r['multi30k']['paragraphs']} paragraphs / {r['multi30k']['sentences']} sentences, "
              f"{r['multi30k']['captions_given_a_period']} captions given a '.' (no end mark: no boundary to find)")
    header = (f"{'candidate':<18} {'lang':<4} {'code':<4} {'hand exact':>12} {'hand P/R':>11} "
              f"{'M30k exact':>17} {'spaces*':>7} {'M30k P/R':>11} {'sent/s':>11}")
    print(header)
    print("-" * len(header))
    for name, lang, code, e in rows:
        h, m = e["hand"], e["multi30k"]
        print(f"{name:<18} {lang:<4} {code:<4} {h['exact']:>3}/{h['paragraphs']:<3} {h['exact_share']:>4.0%} "
              f"{h['boundary_precision']:>5.2f}/{h['boundary_recall']:<5.2f} "
              f"{m['exact']:>5}/{m['paragraphs']:<5} {m['exact_share']:>5.1%} {m['exact_inner_whitespace_ignored']:>7} "
              f"{m['boundary_precision']:>5.3f}/{m['boundary_recall']:<5.3f} {e['sentences_per_s']:>11,.0f}")
    print("spaces*: Multi30k paragraphs split exactly once runs of spaces inside a sentence count as one")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
