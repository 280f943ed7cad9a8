"""A request's work: its texts (lines, paragraphs, HTML, a file) cut into sentences, decoded in the pair's loop
together with other requests' sentences, and put back together, as `nmt translate` puts them together.

Every text of a request becomes a `BlockJob` (`nmt.documents.translate`): a line of plain text is a
block, split into sentences unless the server was told not to; an HTML text gives its blocks of
inline content; a file gives its paragraphs. The sentences of all the request's texts for one
pair are submitted as one job, so a paragraph's sentences are batched with each other and with
other requests'. Inline markup is placed by word alignment, which runs on the loop's own thread
between batches, every waiting request's pairs together (`DecodingLoop.align`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional

from starlette.requests import Request

from nmt.documents.html import HtmlDocument
from nmt.documents.markup import Block
from nmt.documents.sentences import Segmenter
from nmt.documents.translate import BlockJob
from nmt.errors import DataError
from nmt.serve.batching import DecodingLoop, Hypotheses
from nmt.serve.params import RequestError, split_lines


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its sentences were dropped."""


@dataclass(eq=False)
class Work:
    """One text (or file) of a request for one pair's loop."""

    loop: DecodingLoop
    languages: tuple[Optional[str], Optional[str]]
    job: BlockJob
    document: Any = None  # an HtmlDocument or OfficeDocument; None: lines of plain text
    hypotheses: Optional[list[Hypotheses]] = None
    results: Optional[list] = None  # (translation, placed marks) of each block


def parse_html(text: str) -> HtmlDocument:
    try:
        return HtmlDocument(text)
    except DataError as exc:
        raise RequestError(400, f"Invalid request: {exc}") from None


def text_blocks(text: str) -> list[Block]:
    """A plain text's lines, each a block (a paragraph), as `nmt translate --split-sentences` reads a file."""
    return [Block(line) for line in split_lines(text)]


def prepare(loop: DecodingLoop, languages: tuple[Optional[str], Optional[str]], segmenter: Segmenter,
            text: str, format: str) -> Work:
    document = parse_html(text) if format == "html" else None
    blocks = document.blocks() if document is not None else text_blocks(text)
    return Work(loop, languages, BlockJob(blocks, segmenter), document)


async def run(works: list[Work], nbest: int = 1, request: Optional[Request] = None) -> None:
    """Decode every work's sentences (one job per loop and language pair), then align those that have marks."""
    groups: dict[tuple[int, tuple], list[Work]] = {}
    for work in works:
        groups.setdefault((id(work.loop), work.languages), []).append(work)
    for group in groups.values():
        loop, languages = group[0].loop, group[0].languages
        sentences = [s for work in group for s in work.job.sentences]
        found = await _decode(loop, sentences, max(loop.translator.config.decode.beam, nbest), nbest, languages, request)
        position = 0
        for work in group:
            work.hypotheses = found[position:position + len(work.job.sentences)]
            position += len(work.job.sentences)
        pairs = [work.job.translated([h[0][0] for h in work.hypotheses]) for work in group]
        flat = [pair for pairs_of in pairs for pair in pairs_of]
        links = await loop.align(flat, languages) if flat else []
        position = 0
        for work, pairs_of in zip(group, pairs):
            work.results = work.job.result(links[position:position + len(pairs_of)])
            position += len(pairs_of)


def answer(work: Work, alternatives: int = 0) -> tuple[Any, list[str]]:
    """The work's translation (text, or the document rendered: a str or bytes) and its alternatives
    (plain text only: each sentence's next-best hypothesis in its place)."""
    if work.document is not None:
        return work.document.render(work.results), []
    best = "\n".join(target for target, _ in work.results)
    assert work.hypotheses is not None
    others = ["\n".join(work.job.joined([h[min(i, len(h) - 1)][0] for h in work.hypotheses]))
              for i in range(1, alternatives + 1)]
    return best, list(dict.fromkeys(o for o in others if o != best))  # unique, as LibreTranslate's


async def _decode(loop: DecodingLoop, sentences: list[str], beam: int, nbest: int,
                  languages: tuple[Optional[str], Optional[str]], request: Optional[Request]) -> list[Hypotheses]:
    if not sentences:
        return []
    job = loop.submit(sentences, beam, nbest, languages)
    if request is not None and not await wait_unless_gone(job.future, request):
        loop.cancel(job)
        raise ClientGone
    return await job.future


async def wait_unless_gone(future: asyncio.Future, request: Request) -> bool:
    """Wait for `future`; False (and the future left alone) if the client disconnects first."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    watch = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    return future in done
