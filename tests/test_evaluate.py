"""sacreBLEU scoring and its signatures."""

from __future__ import annotations

import json

import pytest

from nmt.errors import DataError
from nmt.evaluate import format_scores, score


def test_perfect_and_imperfect() -> None:
    refs = ["Ein Hund läuft über die Wiese .", "Zwei Kinder spielen im Sand ."]
    perfect = score(refs, refs)
    assert perfect["bleu"] == 100.0 and perfect["chrf"] == 100.0 and perfect["ter"] == 0.0
    assert perfect["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    lower = score([r.lower() for r in refs], refs)
    assert lower["bleu"] < 100 and lower["bleu_lc"] == 100.0 and "case:lc|eff:no|tok:13a" in lower["bleu_lc_signature"]
    worse = score(["Ein Hund rennt .", "Kinder im Sand ."], refs)
    assert 0 < worse["bleu"] < 100 and worse["ter"] > 0
    assert "BLEU" in format_scores(worse) and worse["chrf_signature"] in format_scores(worse)


def test_misaligned() -> None:
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        score(["a", "b"], ["a"])


def test_several_references() -> None:
    hyps = ["A dog runs .", "Two kids play ."]
    first, second = ["A dog runs .", "Two children play ."], ["The dog is running .", "Two kids play ."]
    both = score(hyps, first, second)
    assert both["bleu"] == 100.0 and both["bleu_signature"].startswith("nrefs:2|")
    assert score(hyps, first)["bleu"] < 100.0
    with pytest.raises(DataError, match="reference set 2"):
        score(hyps, first, ["x"])


def test_bootstrap_intervals_and_paired_test() -> None:
    """Confidence intervals come with the same scores and a signature that says how they were made;
    seeded, they repeat; a paired test tells a much worse system from the same one."""
    refs = [f"Ein Hund Nummer {i} läuft über die Wiese ." for i in range(40)]
    hyps = [r if i % 3 else f"Ein Hund {i} rennt ." for i, r in enumerate(refs)]
    plain, bootstrapped = score(hyps, refs), score(hyps, refs, bootstrap=200)
    for name in ("bleu", "chrf", "ter", "bleu_lc"):
        assert bootstrapped[name] == plain[name] and bootstrapped[f"{name}_ci"] > 0
    assert "|bs:200|seed:12345|" in bootstrapped["bleu_signature"]
    assert score(hyps, refs, bootstrap=200) == bootstrapped
    assert json.loads(json.dumps(bootstrapped)) == bootstrapped  # plain numbers, for --json
    assert "±" in format_scores(bootstrapped)
    near = hyps[:38] + ["Ein Hund Nummer 38 rennt über die Wiese ."] + hyps[39:]  # one word of a right sentence wrong
    close = score(hyps, refs, baseline=near)
    assert close["bleu_baseline"] < close["bleu"] and close["bleu_p"] > 0.05 and "|bs:1000|" in close["bleu_signature"]
    worse = [f"Katze {i} ." for i in range(40)]
    against = score(hyps, refs, baseline=worse, bootstrap=200)
    assert against["bleu_baseline"] < against["bleu"] and against["bleu_p"] < 0.01 and against["chrf_p"] < 0.01
    assert "p = " in format_scores(against) and "baseline" in format_scores(against)
    with pytest.raises(DataError, match="40 hypotheses but 2 baseline lines"):
        score(hyps, refs, baseline=worse[:2])


def test_placeholders_kept() -> None:
    from nmt.evaluate import placeholder_match, placeholders

    assert placeholders("Delete %s files in %1$d dirs: {name} <b>now</b> &amp; %-10s %(user)s %%") == {
        "%s": 1, "%1$d": 1, "{name}": 1, "<b>": 1, "</b>": 1, "&amp;": 1, "%-10s": 1, "%(user)s": 1, "%%": 1}
    sources = ["Open %s", "<b>Save</b> {file}", "no placeholder here", "%d of %d"]
    hyps = ["%s öffnen", "{file} <b>speichern</b>", "kein Platzhalter", "%d von d"]
    assert placeholder_match(sources, hyps) == {"placeholders": 66.67, "placeholder_sentences": 3}
    assert placeholder_match(["plain"], ["schlicht"]) == {"placeholders": None, "placeholder_sentences": 0}
