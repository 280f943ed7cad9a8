"""Scoring with sacreBLEU: BLEU, chrF and TER with their signatures."""

from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.errors import DataError


def score(hyps: Sequence[str], *refs: Sequence[str], where: str = "hypotheses") -> dict:
    """Corpus-level sacreBLEU scores (cased, detokenized input) and each metric's signature.

    `refs` is one reference stream per reference translation, each line-aligned with `hyps`.
    """
    if not refs:
        raise DataError(f"{where}: no references given")
    for number, stream in enumerate(refs, start=1):
        if len(hyps) != len(stream):
            which = f" (reference set {number})" if len(refs) > 1 else ""
            raise DataError(f"{where}: {len(hyps)} hypotheses but {len(stream)} references{which}; "
                            "they must be line-aligned")
    if not hyps:
        raise DataError(f"{where}: nothing to score (no lines)")
    result: dict = {"sentences": len(hyps)}
    # bleu_lc (lowercased, 13a tokenization) is stated separately so scores line up with papers that report it.
    metrics = (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER()), ("bleu_lc", BLEU(lowercase=True, tokenize="13a")))
    for name, metric in metrics:
        value = metric.corpus_score(list(hyps), [list(stream) for stream in refs])
        result[name] = round(value.score, 2)
        result[f"{name}_signature"] = str(metric.get_signature())
    return result


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU only (used for validation during training)."""
    return BLEU().corpus_score(list(hyps), [list(refs)]).score


def format_scores(scores: dict) -> str:
    """Human-readable lines: each score with its signature."""
    names = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER", "bleu_lc": "BLEU (lowercased)"}
    return "\n".join(f"{label:17s} = {scores[key]:6.2f}  {scores[key + '_signature']}" for key, label in names.items())
