"""Which target words translate which source words: links read off a model's cross-attention.

The translation is fed back to the decoder (teacher-forced, in batches of like lengths) and the
cross-attention of its second-to-last layer, averaged over heads, is summed from subword pieces to
words (the pieces of a word are those from one "▁" to the next). A link joins each target word to
the source word it attends to most, and each source word to the target word that attends to it
most (the union of both directions, so that every word of an inline element finds a place).
Cross-attention is a rough aligner; it is used only to put inline markup back in place, where a
word off is a small harm and a lost tag a larger one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from nmt.tokenizer import EOS_ID, PAD_ID, Tokenizer

Links = list[tuple[int, int]]  # (source word, target word), words counted as str.split() counts them


def _pieces(tokenizer: Tokenizer, ids: Sequence[int], side: str) -> list[str]:
    if side == "target":
        return tokenizer.tgt_pieces(ids)
    if tokenizer.vocab is not None:
        return [tokenizer.vocab.source[int(i)] for i in ids]
    return [tokenizer.src.id_to_piece(int(i)) for i in ids]


def piece_words(pieces: Sequence[str], words: int) -> list[int]:
    """The word each piece belongs to; where the pieces' word starts do not match `words` (a normalization
    the splitter does not see), pieces are shared out over the words in proportion."""
    index, found = [], -1
    for position, piece in enumerate(pieces):
        if piece.startswith("\u2581") or position == 0:
            found += 1
        index.append(found)
    if found + 1 == words or not pieces:
        return index
    return [min(words - 1, position * words // len(pieces)) for position in range(len(pieces))]


def word_links(translator, pairs: Sequence[tuple[str, str]], src_lang: Optional[str] = None,
               tgt_lang: Optional[str] = None) -> list[Links]:
    """Links of each (source sentence, its translation) pair, by `translator`'s model (see the module's docstring)."""
    tokenizer: Tokenizer = translator.tokenizer_for(src_lang, tgt_lang)
    model = translator.model
    limit = model.config.max_positions - 1
    src_prefix, tgt_prefix = len(tokenizer.src_prefix), len(tokenizer.tgt_prefix)
    src_ids = [ids[:limit] + [EOS_ID] for ids in tokenizer.encode_src([s for s, _ in pairs])]
    tgt_ids = [ids[:limit] for ids in tokenizer.encode_tgt([t for _, t in pairs])]
    weights = _attention(model, src_ids, [[model.start_id] + ids for ids in tgt_ids], translator.device)
    out: list[Links] = []
    for row, ((source, target), s_ids, t_ids) in enumerate(zip(pairs, src_ids, tgt_ids)):
        s_words, t_words = len(source.split()), len(target.split())
        if not s_words or not t_words:
            out.append([])
            continue
        s_pieces = _pieces(tokenizer, s_ids[src_prefix:-1], "source")
        t_pieces = _pieces(tokenizer, t_ids[tgt_prefix:], "target")
        s_of = torch.tensor(piece_words(s_pieces, s_words))
        t_of = torch.tensor(piece_words(t_pieces, t_words))
        # Row t of the teacher-forced attention is the step that produces target piece t.
        pieces = weights[row][tgt_prefix:tgt_prefix + len(t_pieces), src_prefix:src_prefix + len(s_pieces)]
        words = torch.zeros(t_words, len(s_pieces)).index_add_(0, t_of, pieces)  # (target words, source pieces)
        words = torch.zeros(s_words, t_words).index_add_(0, s_of, words.t()).t()  # (target words, source words)
        links = {(int(s), t) for t, s in enumerate(words.argmax(dim=1))}
        links |= {(s, int(t)) for s, t in enumerate(words.argmax(dim=0))}
        out.append(sorted(links))
    return out


# Pairs aligned in one forward pass: at most this many padded tokens a side (sorted by length, so little padding).
ALIGN_BATCH_TOKENS = 4096


@torch.no_grad()
def _attention(model, src_ids: list[list[int]], tgt_in: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """The second-to-last decoder layer's cross-attention for each pair, averaged over heads: (T, S) each.

    Pairs go through in batches of like lengths, and the decoder's output is not projected onto the
    vocabulary: only the attention is wanted (the output projection would cost more than the rest)."""
    attention = model.decoder[max(0, len(model.decoder) - 2)].cross_attn
    order = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), len(tgt_in[i])))
    out: list[Optional[torch.Tensor]] = [None] * len(src_ids)
    start = 0
    while start < len(order):
        stop, longest = start, 0
        while stop < len(order):
            grown = max(longest, len(src_ids[order[stop]]), len(tgt_in[order[stop]]))
            if stop > start and (stop - start + 1) * grown > ALIGN_BATCH_TOKENS:
                break
            longest, stop = grown, stop + 1
        rows = order[start:stop]
        attention.recorded = []
        try:
            memory, src_mask = model.encode(_padded([src_ids[i] for i in rows], device))
            model.decode(_padded([tgt_in[i] for i in rows], device), memory, src_mask, project=False)
            weights = attention.recorded[0].float().mean(dim=1).cpu()  # (B, T, S)
        finally:
            attention.recorded = None
        for row, i in enumerate(rows):
            out[i] = weights[row, :len(tgt_in[i]), :len(src_ids[i])]
        start = stop
    return out  # type: ignore[return-value]


def _padded(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    longest = max(len(row) for row in rows)
    return torch.tensor([row + [PAD_ID] * (longest - len(row)) for row in rows], device=device)
