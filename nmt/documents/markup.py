"""Inline markup carried across a translation: a block's marks (bold, links, runs of a Word file) placed on
its translation by word alignment, with their nesting and order kept.

A `Block` is the plain text a sentence-level model translates (a paragraph of HTML, a paragraph of
a .docx) and the `Mark`s over it: character ranges, nested as the elements are, some of zero
width (an image, a comment). `project` places them on the translation: each mark covers the
target words linked to its source words (see `nmt.documents.alignment`), clamped so that a child
stays inside its parent and siblings keep their order without overlapping. A mark no word links
to, or one squeezed out by reordering, becomes empty where it falls: the markup's tree is kept
whole even where the alignment is wrong. An opaque mark (code) keeps its own content; the words
translated for it are dropped.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from nmt.documents.alignment import Links

_WORD = re.compile(r"\S+")


@dataclass(eq=False)
class Mark:
    """An inline element over `text[start:end]` of its block (zero width: a point); `node` is what the
    document's format needs to write it back, untouched here."""

    start: int
    end: int
    children: list["Mark"] = field(default_factory=list)
    opaque: bool = False  # its content stays as it is (code); not translated
    node: Any = None


@dataclass(eq=False)
class Block:
    """Text to translate as one paragraph, with the marks over it (top level first, in order)."""

    text: str
    marks: list[Mark] = field(default_factory=list)


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def block_links(source: str, target: str, source_units: Sequence[tuple[int, int]],
                target_units: Sequence[tuple[int, int]], unit_links: Sequence[Links]) -> Links:
    """Links between the words of a whole block, from those of its sentences (each unit's character
    range in `source` and in `target`, and its links between its own words)."""
    src_starts = [a for a, _ in word_spans(source)]
    tgt_starts = [a for a, _ in word_spans(target)]
    links: set[tuple[int, int]] = set()
    for (s0, s1), (t0, t1), local in zip(source_units, target_units, unit_links):
        src_words = [bisect.bisect_right(src_starts, s0 + a) - 1 for a, _ in word_spans(source[s0:s1])]
        tgt_words = [bisect.bisect_right(tgt_starts, t0 + a) - 1 for a, _ in word_spans(target[t0:t1])]
        links.update((src_words[s], tgt_words[t]) for s, t in local if s < len(src_words) and t < len(tgt_words))
    return sorted(links)


def project(block: Block, target: str, links: Links) -> list[Mark]:
    """`block`'s marks placed on `target`, its translation (see the module's docstring)."""
    src_words, tgt_words = word_spans(block.text), word_spans(target)
    by_source: dict[int, list[int]] = {}
    for s, t in links:
        by_source.setdefault(s, []).append(t)

    def aligned(mark: Mark) -> Optional[tuple[int, int]]:
        if mark.start == mark.end:  # a point: after the translation of the word before it
            before = [i for i, (_, b) in enumerate(src_words) if b <= mark.start]
            if not before:
                return (0, 0)
            targets = by_source.get(before[-1], [])
            position = tgt_words[max(targets)][1] if targets else None
            return None if position is None else (position, position)
        inside = [i for i, (a, b) in enumerate(src_words) if a < mark.end and b > mark.start]
        targets = sorted(t for i in inside for t in by_source.get(i, []))
        if not targets:
            return None
        start, end = tgt_words[targets[0]][0], tgt_words[targets[-1]][1]
        # A mark that ends inside a word before its punctuation ("<a>here</a>.") leaves the punctuation out.
        last = src_words[inside[-1]]
        if mark.end < last[1] and _punctuation(block.text[mark.end:last[1]]):
            end = _strip_end(target, start, end)
        first = src_words[inside[0]]
        if mark.start > first[0] and _punctuation(block.text[first[0]:mark.start]):
            start = _strip_start(target, start, end)
        return start, end

    def place(marks: Sequence[Mark], low: int, high: int) -> list[Mark]:
        placed, cursor = [], low
        for mark in marks:
            start, end = aligned(mark) or (cursor, cursor)
            start = min(max(start, cursor), high)
            end = min(max(end, start), high)
            placed.append(Mark(start, end, place(mark.children, start, end), mark.opaque, mark.node))
            cursor = end
        return placed

    return place(block.marks, 0, len(target))


def _punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)


def _strip_end(text: str, start: int, end: int) -> int:
    while end > start + 1 and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return end


def _strip_start(text: str, start: int, end: int) -> int:
    while start < end - 1 and unicodedata.category(text[start]).startswith("P"):
        start += 1
    return start
