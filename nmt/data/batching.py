"""Batching: each epoch's token-budget batches, built with vectorised numpy from the lengths alone, and the
model inputs (padded tensors) of a batch, gathered from the memory-mapped stores or from lists."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from nmt.data.cleaning import CleanStats
from nmt.data.store import TokenStore
from nmt.tokenizer import EOS_ID, PAD_ID


class EpochBatches:
    """One epoch's batches: `rows` sorted by length and cut at `bounds`, taken in the shuffled `order`."""

    def __init__(self, rows: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> None:
        self.rows, self.bounds, self.order = rows, bounds, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> np.ndarray:
        batch = self.order[index]
        return self.rows[self.bounds[batch]:self.bounds[batch + 1]]


def _sorted(src_lengths: np.ndarray, tgt_lengths: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` ordered by (longer side, source length, target length), ties in random order.

    One sort of packed 64-bit keys (length fields above each row's place in a random permutation),
    which numpy sorts several times faster than it argsorts; lexsort where the fields do not fit.
    """
    shuffled = rows[rng.permutation(len(rows))]
    s, t = src_lengths[shuffled], tgt_lengths[shuffled]
    longer = np.maximum(s, t)
    width = int(longer.max()).bit_length() if len(rows) else 1
    place = max(1, (len(rows) - 1).bit_length())
    if 3 * width + place > 64:
        return shuffled[np.lexsort((t, s, longer))]  # stable: ties keep the random order
    key = longer.astype(np.uint64)  # in place from here: 8 bytes a row, not one temporary per step
    del longer
    for field, bits in ((s, width), (t, width), (np.arange(len(rows), dtype=np.uint64), place)):
        key <<= np.uint64(bits)
        np.bitwise_or(key, field, out=key, casting="unsafe")  # lengths are non-negative
    key.sort()
    key &= np.uint64((1 << place) - 1)
    return shuffled[key.astype(np.int64)]


def padded_tokens(rows, longest):
    """What a batch costs against a token budget: its rows times its longest row (every row is padded to
    it). Works on numbers and on numpy arrays alike. Training's rows are pairs, each as long as its
    source plus its target; decoding's are a sentence's beam rows, as long as its source."""
    return rows * longest


def rows_within(budget: int, longest: int) -> int:
    """The most rows as long as `longest` that fit `budget`; at least one (a longer row is a batch alone)."""
    return max(1, budget // longest)


def _cut(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """Bounds of consecutive batches of at most `max_tokens` padded tokens ((rows) x (longest source + longest
    target)); a row longer than the budget is a batch of its own. Lengths count EOS and the shifted BOS."""
    n = len(src_lengths)
    bounds = [0]
    start = 0
    while start < n:
        # No batch from `start` holds more rows than the budget allows for its first row alone.
        width = rows_within(max_tokens, int(src_lengths[start] + tgt_lengths[start])) + 1
        longest_src = np.maximum.accumulate(src_lengths[start:start + width])
        longest_tgt = np.maximum.accumulate(tgt_lengths[start:start + width])
        cost = padded_tokens(np.arange(1, len(longest_src) + 1), longest_src + longest_tgt)
        over = np.flatnonzero(cost[1:] > max_tokens)
        start += int(over[0]) + 1 if len(over) else len(cost)
        bounds.append(start)
    return np.array(bounds, dtype=np.int64)


def epoch_batches(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, rng: np.random.Generator,
                  rows: Optional[np.ndarray] = None) -> EpochBatches:
    """Token-budget batches of `rows` (all rows by default) for one epoch; lengths are unsigned integer arrays.

    Rows are sorted by length (longer side first, then source, then target length, random tie-break), so
    a batch holds similar lengths and little padding: sorted by source length alone, a batch straddling two
    source lengths runs from the longest targets of one to the shortest of the next (on Multi30k 11% of
    target positions were padding; with this key 4%). The batch order is then shuffled. Everything depends
    only on (lengths, max_tokens, the generator's seed), which is what makes resuming at a batch index exact.
    """
    if rows is None:
        rows = np.arange(len(src_lengths), dtype=np.int64 if len(src_lengths) >= 1 << 31 else np.int32)
    ordered = _sorted(src_lengths, tgt_lengths, rows, rng)
    s = src_lengths[ordered].astype(np.int64) + 1  # EOS on the source, BOS/EOS shift on the target
    t = tgt_lengths[ordered].astype(np.int64) + 1
    bounds = _cut(s, t, max_tokens)
    return EpochBatches(ordered, bounds, rng.permutation(len(bounds) - 1))


def make_batches(src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_tokens: int,
                 seed: int, epoch: int) -> list[list[int]]:
    """`epoch_batches` of lengths given as lists, as lists of indices (for small sets such as validation)."""
    batches = epoch_batches(np.asarray(src_lengths, dtype=np.uint32), np.asarray(tgt_lengths, dtype=np.uint32),
                            max_tokens, np.random.default_rng([seed, epoch]))
    return [batches[i].tolist() for i in range(len(batches))]


def weighted_rows(sizes: Sequence[int], weights: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """One epoch's rows of corpora laid end to end: corpus i (sizes[i] rows) appears weights[i] times; a
    fractional part takes that share of its rows, drawn anew each epoch."""
    parts, start = [], 0
    dtype = np.int64 if sum(sizes) >= 1 << 31 else np.int32
    for size, weight in zip(sizes, weights):
        whole, fraction = divmod(weight, 1.0)
        rows = np.arange(start, start + size, dtype=dtype)
        parts += [rows] * int(whole)
        extra = round(fraction * size)
        if extra:
            parts.append(start + np.sort(rng.choice(size, extra, replace=False)).astype(dtype))
        start += size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def model_inputs(src: np.ndarray, src_lengths: np.ndarray, tgt: np.ndarray, tgt_lengths: np.ndarray,
                 start_id: int) -> dict[str, torch.Tensor]:
    """Model inputs from padded ids (B, S) and (B, T) and their lengths: source + EOS, target input
    start + y, target output y + EOS (all padded).

    `start_id` is the model's first decoder input (`Transformer.start_id`). "targets" holds the flat
    positions of the non-padding entries of tgt_out, so training can pick them on any device without
    a boolean mask (whose size a GPU would have to report back to the host).
    """
    B = len(src)
    rows = np.arange(B)
    source = np.zeros((B, src.shape[1] + 1), dtype=np.int64)
    source[:, :-1] = src
    source[rows, src_lengths] = EOS_ID
    tgt_in = np.zeros((B, tgt.shape[1] + 1), dtype=np.int64)
    tgt_in[:, 0] = start_id
    tgt_in[:, 1:] = tgt
    tgt_out = np.zeros_like(tgt_in)
    tgt_out[:, :-1] = tgt
    tgt_out[rows, tgt_lengths] = EOS_ID
    assert PAD_ID == 0  # the zeros above are padding
    return {"src": torch.from_numpy(source), "tgt_in": torch.from_numpy(tgt_in), "tgt_out": torch.from_numpy(tgt_out),
            "targets": torch.from_numpy(np.flatnonzero(tgt_out != PAD_ID))}


def _padded(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    out = np.zeros((len(sequences), int(lengths.max()) if len(sequences) else 0), dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out, lengths


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], start_id: int) -> dict[str, torch.Tensor]:
    """`model_inputs` of token-id lists (no special tokens)."""
    return model_inputs(*_padded(src), *_padded(tgt), start_id)


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> torch.Tensor:
    """Right-pad integer sequences into a (B, L) long tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


class TrainingData:
    """The prepared training corpora, laid end to end: lengths, each epoch's batches, and their model inputs.

    `weights[i]` says how many times corpus i is seen per epoch relative to the others (see `weighted_rows`).
    """

    def __init__(self, stores: list[TokenStore], names: list[str], weights: list[float],
                 stats: list[CleanStats]) -> None:
        self.stores, self.names, self.weights, self.stats = stores, names, weights, stats
        self.sizes = [store.rows for store in stores]
        self.first_rows = np.cumsum([0, *self.sizes])
        self.src_lengths = _joined([store.lengths["src"] for store in stores])
        self.tgt_lengths = _joined([store.lengths["tgt"] for store in stores])

    def __len__(self) -> int:
        return int(self.first_rows[-1])

    def epoch(self, max_tokens: int, seed: int, epoch: int) -> EpochBatches:
        """The batches of epoch `epoch`: the same for the same (corpora, weights, max_tokens, seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        rows = None if self.weights == [1.0] * len(self.stores) else weighted_rows(self.sizes, self.weights, rng)
        return epoch_batches(self.src_lengths, self.tgt_lengths, max_tokens, rng, rows)

    def gather(self, side: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Padded ids (len(rows), longest) of `rows`' `side`, and their lengths (see `TokenStore.gather`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.stores) == 1:
            return self.stores[0].gather(side, rows)
        store = np.searchsorted(self.first_rows, rows, side="right") - 1
        parts = {i: self.stores[i].gather(side, rows[store == i] - self.first_rows[i]) for i in np.unique(store)}
        longest = max(ids.shape[1] for ids, _ in parts.values())
        ids, lengths = np.zeros((len(rows), longest), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
        for i, (part, part_lengths) in parts.items():
            ids[store == i, : part.shape[1]], lengths[store == i] = part, part_lengths
        return ids, lengths

    def collate(self, rows: np.ndarray, start_id: int) -> dict[str, torch.Tensor]:
        """Model inputs of the pairs `rows` (see `model_inputs`)."""
        return model_inputs(*self.gather("src", rows), *self.gather("tgt", rows), start_id)

    def pair(self, row: int) -> tuple[list[int], list[int]]:
        """The source and target ids of one pair."""
        (src, src_length), (tgt, tgt_length) = self.gather("src", [row]), self.gather("tgt", [row])
        return src[0, : src_length[0]].tolist(), tgt[0, : tgt_length[0]].tolist()


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
