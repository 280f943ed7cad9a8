"""Blocks of text through a sentence-level model: cut into sentences, translated, joined back, their marks placed.

A `BlockJob` holds one document's blocks (or one request's paragraphs) between the steps, so that
the same steps serve a file translated at once (`translate_blocks`) and a server that decodes the
sentences in its own batches and awaits them:

    job = BlockJob(blocks, segmenter)
    translations = decode(job.sentences)            # any way of translating a list of sentences
    pairs = job.translated(translations)            # (source, translation) sentences needing links
    results = job.result(align(pairs))              # (target text, placed marks) per block
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from nmt.documents.alignment import Links
from nmt.documents.markup import Block, Mark, block_links, project
from nmt.documents.sentences import Segmenter, Segments

Translate = Callable[[list[str]], list[str]]
Align = Callable[[list[tuple[str, str]]], list[Links]]


class BlockJob:
    """One document's blocks between being cut into sentences and being put back together."""

    def __init__(self, blocks: Sequence[Block], segmenter: Segmenter, segments: Optional[Sequence[Segments]] = None
                 ) -> None:
        """`segments`, when given, are the blocks' texts as `segmenter` has already cut them."""
        self.blocks = list(blocks)
        self.segments: list[Segments] = (list(segments) if segments is not None else
                                         [segmenter.segment(block.text) for block in self.blocks])
        self.sentences: list[str] = [s for segments in self.segments for s in segments.sentences]
        self.targets: list[str] = []
        # Per block with marks: its index, its sentences' ranges in the source and in the translation, and
        # which sentences need links (those a mark begins or ends in: see `_needing_links`).
        self._units: list[tuple[int, list[tuple[int, int]], list[tuple[int, int]], list[bool]]] = []

    def translated(self, translations: Sequence[str]) -> list[tuple[str, str]]:
        """Take the sentences' translations; return the (sentence, translation) pairs of the blocks with
        marks, whose links `result` needs, in order."""
        self.targets = self.joined(translations)
        found = iter(translations)
        pairs: list[tuple[str, str]] = []
        for index, (block, segments) in enumerate(zip(self.blocks, self.segments)):
            mine = [next(found) for _ in segments.sentences]
            if block.marks and segments.sentences:
                source_units = _ranges(segments.glue, segments.sentences)
                needed = _needing_links(block.marks, source_units)
                self._units.append((index, source_units, _ranges(segments.glue, mine), needed))
                pairs.extend(pair for pair, need in zip(zip(segments.sentences, mine), needed) if need)
        return pairs

    def joined(self, translations: Sequence[str]) -> list[str]:
        """Each block's text with `translations` (one for each of `sentences`, in order) in its sentences' places."""
        assert len(translations) == len(self.sentences)
        found = iter(translations)
        return [segments.join([next(found) for _ in segments.sentences]) for segments in self.segments]

    def result(self, links: Sequence[Links] = ()) -> list[tuple[str, list[Mark]]]:
        """(translation, marks placed on it) of each block, given the links of `translated`'s pairs."""
        placed: dict[int, list[Mark]] = {}
        found = iter(links)
        for index, source_units, target_units, needed in self._units:
            unit_links = [next(found) if need else [] for need in needed]
            block = self.blocks[index]
            merged = block_links(block.text, self.targets[index], source_units, target_units, unit_links)
            placed[index] = project(block, self.targets[index], merged)
        return [(target, placed.get(i, [])) for i, target in enumerate(self.targets)]


def _needing_links(marks: Sequence[Mark], units: Sequence[tuple[int, int]]) -> list[bool]:
    """Which sentences a mark begins or ends in: only there do words decide where the mark goes (a mark
    over whole sentences takes the first and last words linked), so only they are aligned, a cost of
    one more pass of the decoder over their translations."""
    bounds: list[int] = []
    todo = list(marks)
    while todo:
        mark = todo.pop()
        bounds += [mark.start, mark.end]
        todo.extend(mark.children)
    return [any(start <= b <= end for b in bounds) for start, end in units]


def _ranges(glue: Sequence[str], parts: Sequence[str]) -> list[tuple[int, int]]:
    """Where each part lies in glue[0] + parts[0] + glue[1] + ...: (start, end) characters."""
    ranges, position = [], len(glue[0])
    for part, after in zip(parts, glue[1:]):
        ranges.append((position, position + len(part)))
        position += len(part) + len(after)
    return ranges


def translate_blocks(blocks: Sequence[Block], segmenter: Segmenter, translate: Translate,
                     align: Optional[Align] = None) -> list[tuple[str, list[Mark]]]:
    """Translate blocks at once: (translation, placed marks) of each."""
    job = BlockJob(blocks, segmenter)
    pairs = job.translated(translate(job.sentences) if job.sentences else [])
    return job.result(align(pairs) if pairs and align is not None else [[] for _ in pairs])


def translate_paragraphs(lines: Sequence[str], segmenter: Segmenter, translate: Translate,
                         segments: Optional[Sequence[Segments]] = None) -> list[str]:
    """Each line translated as a paragraph: its sentences translated, joined with the line's own spaces.
    `segments`: the lines as `segmenter` has already cut them, if it has."""
    job = BlockJob([Block(line) for line in lines], segmenter, segments)
    return job.joined(translate(job.sentences) if job.sentences else [])


def translate_documents(documents: Sequence, segmenter: Segmenter, translate: Translate,
                        align: Optional[Align] = None) -> list:
    """Several parsed documents (`HtmlDocument`, `OfficeDocument`) translated together, their sentences in one
    list (so in the same batches, as a file's lines are): each rendered."""
    blocks = [document.blocks() for document in documents]
    results = translate_blocks([b for of in blocks for b in of], segmenter, translate, align)
    rendered, position = [], 0
    for document, of in zip(documents, blocks):
        rendered.append(document.render(results[position:position + len(of)]))
        position += len(of)
    return rendered


def translate_html(source: str, segmenter: Segmenter, translate: Translate, align: Optional[Align] = None) -> str:
    """An HTML document or fragment with its text translated in place (see `nmt.documents.html`)."""
    from nmt.documents.html import HtmlDocument

    return translate_documents([HtmlDocument(source)], segmenter, translate, align)[0]
