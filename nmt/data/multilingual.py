"""Several directions in one run: each direction's share of an epoch by temperature, and a tokenizer sample in
which every language has a fair share, however unequal the corpora (see data.pairs and data.temperature)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nmt.data.cleaning import SentenceSample


def temperature_shares(sizes: Sequence[float], temperature: float) -> np.ndarray:
    """Each direction's share of an epoch: p_i = (n_i/N)^(1/T) / sum_j (n_j/N)^(1/T) for directions of n_i
    pairs (N in all). T = 1 is in proportion to size, T -> inf uniform; T = 5 lifts a direction 100 times
    smaller than the largest to 100^(-1/5) = 0.4 of its share (Arivazhagan et al. 2019, "Massively
    Multilingual Neural Machine Translation in the Wild")."""
    n = np.asarray(sizes, dtype=np.float64)
    if math.isinf(temperature):
        raised = (n > 0).astype(np.float64)
    else:
        raised = np.where(n > 0, (n / n.sum()) ** (1.0 / temperature), 0.0)
    return raised / raised.sum()


def temperature_weights(sizes: Sequence[float], temperature: float) -> np.ndarray:
    """The factor by which each direction's corpus weights are multiplied so that its share of an epoch is
    `temperature_shares`' and the epoch keeps its size (the sum of `sizes`): p_i N / n_i. A direction
    weighted 3.4 is seen 3 times and a different 40% of it once more each epoch (`weighted_rows`)."""
    n = np.asarray(sizes, dtype=np.float64)
    if temperature == 1:  # exactly as the corpora are, not 1 +- rounding
        return (n > 0).astype(np.float64)
    shares = temperature_shares(n, temperature)
    return np.where(n > 0, shares * n.sum() / np.maximum(n, 1), 0.0)


class LanguageSamples:
    """A sample of sentences per language for training one vocabulary for all of them: a uniform sample of
    each language's sentences (a `SentenceSample` each; the caller offers each file of a language once:
    English is the source of three directions and the target of three more, from the same file), then
    of those a share for each language by temperature over their sizes, at most `size` sentences in all."""

    def __init__(self, size: int, seed: int, temperature: float) -> None:
        self.size, self.seed, self.temperature = size, seed, temperature
        self.samples: dict[str, SentenceSample] = {}

    def offer(self, sentences: list[str], language: str) -> None:
        if language not in self.samples:
            self.samples[language] = SentenceSample(self.size, self.seed + len(self.samples))
        self.samples[language].add(sentences, 0)

    def sentences(self) -> tuple[list[str], list[str]]:
        """(every language's sampled sentences, []), as `Samples.sentences` gives a joint vocabulary's."""
        languages = sorted(self.samples)
        found = {lang: list(dict.fromkeys(self.samples[lang].sentences()[0])) for lang in languages}
        sizes = [self.samples[lang].seen[0] for lang in languages]
        shares = dict(zip(languages, temperature_shares(sizes, self.temperature)))
        takes = _takes(shares, {lang: len(found[lang]) for lang in languages}, min(self.size, sum(map(len, found.values()))))
        out: list[str] = []
        for lang in languages:
            rng = np.random.default_rng([self.seed, len(out)])
            picked = sorted(rng.choice(len(found[lang]), takes[lang], replace=False).tolist())
            out += [found[lang][i] for i in picked]
        return out, []


def _takes(shares: dict[str, float], available: dict[str, int], total: int) -> dict[str, int]:
    """Sentences to take of each language: `total` by `shares`, a language with fewer than its share
    giving all it has and the rest going to the others by their shares."""
    takes: dict[str, int] = {}
    left, budget = dict(shares), total
    while left:
        weight = sum(left.values()) or 1.0
        short = [lang for lang, share in left.items() if available[lang] <= share / weight * budget]
        if not short:
            break
        for lang in short:
            takes[lang] = available[lang]
            budget -= available[lang]
            del left[lang]
    weight = sum(left.values()) or 1.0
    takes.update({lang: min(available[lang], round(share / weight * budget)) for lang, share in left.items()})
    return takes
