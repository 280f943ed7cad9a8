"""A paragraph cut into the sentences a sentence-level model translates, and joined back around their translations.

`Segmenter.segment(text)` gives the sentences of one line of text and the whitespace around them
(`Segments`), so that `Segments.join(translations)` puts the translations back with the paragraph's
own spaces. Sentences come from a rule-based multilingual splitter (sentencex: no model to
download, see bench/README.md for the comparison that chose it). A sentence longer than the model
takes (a log line with no sentence end) is cut into pieces at word boundaries, preferring a comma
or a semicolon, each piece short enough for the model; none is truncated.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

log = logging.getLogger(__name__)

CountTokens = Callable[[Sequence[str]], list[int]]  # source tokens of each text, as the model counts them

# The splitter's language codes are ISO 639-1; a model's own codes may be longer (deu_Latn, >>deu<<).
_SPLITTER_CODES = {"deu": "de", "eng": "en", "fra": "fr", "fre": "fr", "ces": "cs", "cze": "cs", "spa": "es",
                   "ita": "it", "por": "pt", "nld": "nl", "pol": "pl", "rus": "ru"}
_SOFT_BREAK = re.compile(r"[,;:)\]]\s")  # where a too-long sentence is best cut, after the mark


@dataclass(frozen=True)
class Segments:
    """A text as `glue[0] + sentences[0] + glue[1] + ... + sentences[-1] + glue[-1]`: the glue is the
    whitespace (and, for a piece of a long sentence, the space at the cut) between the sentences."""

    sentences: tuple[str, ...]
    glue: tuple[str, ...]

    def join(self, translations: Sequence[str]) -> str:
        """The translations of `sentences` in their place, with the text's own whitespace around them."""
        assert len(translations) == len(self.sentences)
        parts = [self.glue[0]]
        for translation, glue in zip(translations, self.glue[1:]):
            parts += [translation, glue]
        return "".join(parts)


def splitter_language(code: Optional[str]) -> str:
    """The splitter's code for a model's language code ('en', 'deu_Latn', '>>fra<<'); 'en' when unknown
    (its rules for the Latin script's . ! ? serve most languages)."""
    if not code:
        return "en"
    bare = code.strip("<>").split("_")[0].split("-")[0].lower()
    return _SPLITTER_CODES.get(bare, bare if len(bare) == 2 else "en")


def split_sentences(text: str, language: str = "en") -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, whitespace excluded, in order."""
    from sentencex import segment

    spans: list[tuple[int, int]] = []
    cursor = 0
    for sentence in segment(splitter_language(language), text):
        stripped = sentence.strip()
        if not stripped:
            continue
        start = text.find(stripped, cursor)
        if start < 0:  # the splitter changed the text (it should not): keep the rest as one sentence
            break
        spans.append((start, start + len(stripped)))
        cursor = start + len(stripped)
    rest = text[cursor:]
    if rest.strip():
        start = cursor + len(rest) - len(rest.lstrip())
        spans.append((start, cursor + len(rest.rstrip())))
    return _join_initials(text, spans)


_INITIAL = re.compile(r"(?:^|\s)([^\W\d_])\.$")


def _join_initials(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans with no boundary after a capital initial ("M. Dupont", "J. Smith"), which the splitter's
    French and Czech rules take for a sentence end (bench/README.md, "Sentence splitters")."""
    joined: list[tuple[int, int]] = []
    for start, end in spans:
        if joined:
            found = _INITIAL.search(text[joined[-1][0]:joined[-1][1]])
            if found and found.group(1).isupper():
                joined[-1] = (joined[-1][0], end)
                continue
        joined.append((start, end))
    return joined


class Segmenter:
    """Sentences of a text for one model and source language.

    `max_tokens` is the longest source the model is given (what it was trained on), `count_tokens`
    how it counts them; a longer sentence is cut (see `cut`). `split=False` keeps each line whole
    (only cutting what is too long) and drops the whitespace around it, as translating one sentence a
    line always has.
    """

    def __init__(self, language: str, max_tokens: int, count_tokens: CountTokens, split: bool = True) -> None:
        self.language, self.max_tokens, self.count_tokens, self.split = language, max_tokens, count_tokens, split
        self.cut_sentences = 0  # sentences cut so far, and the pieces they became (see `report`)
        self.cut_pieces = 0

    def report(self) -> None:
        """Log how many sentences were too long and were cut, if any were."""
        if self.cut_sentences:
            log.info("%s sentence(s) longer than the model's %d tokens were cut into %s pieces at word boundaries",
                     f"{self.cut_sentences:,}", self.max_tokens, f"{self.cut_pieces:,}")

    def segment(self, text: str) -> Segments:
        spans = split_sentences(text, self.language) if self.split else _whole(text)
        lengths = self.count_tokens([text[a:b] for a, b in spans]) if spans else []
        pieces: list[tuple[int, int]] = []
        for (start, end), length in zip(spans, lengths):
            if length <= self.max_tokens:
                pieces.append((start, end))
                continue
            cut = self.cut(text, start, end)
            self.cut_sentences += 1
            self.cut_pieces += len(cut)
            log.debug("a sentence of %d tokens (over the model's %d) was cut into %d pieces at word boundaries",
                      length, self.max_tokens, len(cut))
            pieces.extend(cut)
        glue = [text[:pieces[0][0]] if pieces else text]
        glue += [text[end:(pieces[i + 1][0] if i + 1 < len(pieces) else len(text))] for i, (_, end) in enumerate(pieces)]
        if not self.split:  # a line as one sentence: what is around it is not kept, as before there was splitting
            glue[0], glue[-1] = "", ""
        return Segments(tuple(text[a:b] for a, b in pieces), tuple(glue))

    def cut(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """`text[start:end]` as pieces of at most `max_tokens` tokens: each piece as long as fits, ending
        after a comma, semicolon, colon or bracket where one is in its last third, else at the last
        space that fits; a run with no space at all is cut between characters."""
        pieces: list[tuple[int, int]] = []
        while start < end:
            stop = self._longest_fit(text, start, end)
            if stop < end:
                window = text[start:stop]
                soft = [m.end() - 1 for m in _SOFT_BREAK.finditer(window) if m.end() - 1 >= 2 * len(window) // 3]
                spaces = [i for i, ch in enumerate(window) if ch.isspace() and i > 0]
                if soft:
                    stop = start + soft[-1]
                elif spaces and text[stop].isspace() is False:
                    stop = start + spaces[-1]
            piece_end = start + len(text[start:stop].rstrip())
            pieces.append((start, max(piece_end, start + 1)))
            start = stop
            while start < end and text[start].isspace():
                start += 1
        return pieces

    def _longest_fit(self, text: str, start: int, end: int) -> int:
        """The largest stop in (start, end] with text[start:stop] within `max_tokens` (binary search on characters)."""
        if self.count_tokens([text[start:end]])[0] <= self.max_tokens:
            return end
        low, high = start + 1, end  # low fits (one character always counts as fitting), high does not
        while high - low > 1:
            middle = (low + high) // 2
            if self.count_tokens([text[start:middle]])[0] <= self.max_tokens:
                low = middle
            else:
                high = middle
        return low


def _whole(text: str) -> list[tuple[int, int]]:
    stripped = text.strip()
    if not stripped:
        return []
    start = len(text) - len(text.lstrip())
    return [(start, start + len(stripped))]


def segmenter_for(translator, src_lang: Optional[str] = None, tgt_lang: Optional[str] = None,
                  split: bool = True) -> Segmenter:
    """The `Segmenter` of a `Translator` for `src_lang` -> `tgt_lang`: its tokenizer counts the tokens (with
    any language tag), and the limit is the longest source it was trained on (data.max_tokens_per_side),
    within what its position table holds."""
    tokenizer = translator.tokenizer_for(src_lang, tgt_lang)
    config = translator.config
    limit = min(config.data.max_tokens_per_side, config.model.max_positions - 1 - len(tokenizer.src_prefix))

    prefix = len(tokenizer.src_prefix)

    def count(texts: Sequence[str]) -> list[int]:
        """Tokens of each text; a text of fewer UTF-8 bytes than the limit cannot be longer (a piece is at least
        one byte), so only longer texts are encoded, on this thread (SentencePiece's thread pool costs more)."""
        lengths = [len(text.encode("utf-8")) + prefix for text in texts]
        long = [i for i, n in enumerate(lengths) if n > limit]
        if long:
            for i, ids in zip(long, tokenizer.encode_src([texts[i] for i in long], threads=1)):
                lengths[i] = len(ids)
        return lengths
    return Segmenter(src_lang or config.data.src_lang, max(1, limit), count, split)
