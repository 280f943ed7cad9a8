"""The directions of a run: data.pairs ("en-de") as language pairs, the languages a multilingual model has
tags for, and the config rules of data.pairs (config.py's `validate` applies them)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nmt.config import DataConfig, TokenizerConfig

PAIR = re.compile(r"([A-Za-z0-9_]+)-([A-Za-z0-9_]+)")


def directions(config: DataConfig) -> list[tuple[str, str]]:
    """The (source, target) language pairs a run trains: data.pairs, or data.src_lang-data.tgt_lang."""
    if not config.pairs:
        return [(config.src_lang, config.tgt_lang)]
    return [tuple(PAIR.fullmatch(p).groups()) for p in config.pairs]  # type: ignore[misc]


def for_direction(path: str, src_lang: str, tgt_lang: str) -> str:
    """A corpus path with a direction's languages put in for `{src}` and `{tgt}` (a corpus of its own per
    direction: europarl.{src}-{tgt})."""
    return path.replace("{src}", src_lang).replace("{tgt}", tgt_lang)


def target_languages(config: DataConfig) -> list[str]:
    """The languages a multilingual run translates into, in the order data.pairs first names them: its tags."""
    return list(dict.fromkeys(tgt for _, tgt in directions(config))) if config.pairs else []


def pair_rules(d: DataConfig, k: TokenizerConfig) -> list[tuple[bool, str]]:
    """The config rules of data.pairs and data.temperature: (holds, message naming the key) each."""
    bad = [p for p in d.pairs if not PAIR.fullmatch(p) or p.split("-")[0] == p.split("-")[1]]
    return [
        (not bad, f"data.pairs: each direction is SRC-TGT of two codes (letters, digits, _), e.g. en-de; got {bad[:1]}"),
        (len(set(d.pairs)) == len(d.pairs), f"data.pairs: a direction is named twice in {list(d.pairs)}"),
        (not d.pairs or k.language_tags == "target_in_source",
         "tokenizer.language_tags must be target_in_source with data.pairs (the target's tag >>xx<< starts the source)"),
        (not d.pairs or k.joint, "tokenizer.joint must be true with data.pairs (one vocabulary holds every language)"),
        (d.temperature > 0, f"data.temperature must be > 0 (1: by size, inf: uniform), got {d.temperature}"),
    ]
