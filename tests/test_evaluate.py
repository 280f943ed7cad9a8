"""sacreBLEU scoring and its signatures."""

from __future__ import annotations

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
