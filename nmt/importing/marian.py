"""MarianMT (OPUS-MT and the models `nmt export` writes) in nmt's terms.

MarianMT is post-norm with Vaswani's sinusoids from position 0, embeddings scaled by sqrt(d_model)
(as its config says), a trained `final_logits_bias`, padding as the decoder's start, and ids from
`vocab.json` (a joint vocabulary; `target_vocab.json` too when the two sides are separate), not
from the SentencePiece models `source.spm` and `target.spm` that cut the text into pieces.
Multi-target models take a `>>xxx<<` piece before the source: `tokenizer.language_tags:
target_in_source`. OPUS-MT's vocabularies have no BOS (their config's bos is their EOS): nmt gets
a new id for it, never produced (a zero row whose logit's bias is -inf).
"""

from __future__ import annotations

import re

import torch

from nmt.importing.convert import Converted, UnsupportedModel, layers, nmt_order, pieces_in_order, refuse, reorder, require, sizes
from nmt.importing.source import HFModel
from nmt.model import sinusoidal_table
from nmt.tokenizer import JOINT_FILE, PAD_ID, SRC_FILE, TGT_FILE, Vocabulary

TAG = re.compile(r">>(.+)<<")


def _vocabulary(hf: HFModel, name: str, size: int, where: str) -> list[str]:
    """The piece of every id of a vocab.json (piece -> id) of `size` ids."""
    mapping = hf.json(name)
    pieces = [""] * size
    for piece, index in mapping.items():
        if not 0 <= index < size:
            raise UnsupportedModel(f"{hf.where}: {name} gives {piece!r} the id {index}, outside the {where}'s {size}")
        pieces[index] = piece
    holes = [i for i, p in enumerate(pieces) if not p]
    for i in holes:  # ids no piece has (rows the model never sees): named so that no text maps to them
        pieces[i] = f"<unused{i}>"
    return pieces


def _side(hf: HFModel, pieces: list[str], pad: int, eos: int, bos: int | None) -> list[int]:
    if "<unk>" not in pieces:
        raise UnsupportedModel(f"{hf.where}: the vocabulary has no <unk>")
    return nmt_order(len(pieces), pad, pieces.index("<unk>"), eos, bos)


def convert(hf: HFModel) -> Converted:
    c = hf.config
    model = {**sizes(hf, scale_default=False), "norm_first": False, "positions": "sinusoidal",
             "decoder_start": "pad", "preset": "base"}
    pad, eos = int(c["pad_token_id"]), int(c["eos_token_id"])
    require(hf, "decoder_start_token_id", (pad,), "is not the padding id: nmt starts a MarianMT decoder from padding")
    require(hf, "normalize_embedding", (False,))
    require(hf, "static_position_embeddings", (True,), "(learned positions in a MarianMT model)")
    vocab_size = int(c["vocab_size"])
    joint = bool(c.get("share_encoder_decoder_embeddings", True))
    target_size = vocab_size if joint else int(c.get("decoder_vocab_size") or vocab_size)
    tokenizer_config = hf.json("tokenizer_config.json") if hf.has("tokenizer_config.json") else {}
    source_pieces = _vocabulary(hf, "vocab.json", vocab_size, "source vocabulary")
    target_pieces = source_pieces if joint else _vocabulary(hf, "target_vocab.json", target_size, "target vocabulary")
    bos = c.get("bos_token_id")
    bos = int(bos) if bos is not None and bos not in (pad, eos) and bos < target_size else None
    source_order = _side(hf, source_pieces, pad, eos, bos)
    target_order = source_order if joint else _side(hf, target_pieces, pad, eos, bos)

    state = layers(hf, model["n_encoder_layers"], model["n_decoder_layers"], final_norms=False)
    _check_positions(hf, model)
    if joint:
        state["src_embed.tokens.weight"] = reorder(hf.tensor("model.shared.weight").float(), source_order)
    else:
        state["src_embed.tokens.weight"] = reorder(hf.tensor("model.encoder.embed_tokens.weight").float(), source_order)
        state["tgt_embed.tokens.weight"] = reorder(hf.tensor("model.decoder.embed_tokens.weight").float(), target_order)
    lm_head = hf.find("lm_head.weight")
    tied = bool(c.get("tie_word_embeddings", True)) or lm_head is None
    if not tied:
        state["output.weight"] = reorder(lm_head.float(), target_order)
    bias = hf.find("final_logits_bias")
    bias = reorder(bias.float().reshape(-1) if bias is not None else torch.zeros(target_size), target_order, float("-inf"))
    # nmt's own exports say "padding is no class" with a -inf bias; OPUS-MT's keep padding in the softmax.
    pad_in_softmax = not bool(torch.isneginf(bias[PAD_ID]))
    if pad_in_softmax or bool(bias[PAD_ID + 1:].ne(0).any()):
        state["output_bias"] = bias if pad_in_softmax else bias.masked_fill(torch.arange(len(bias)) == PAD_ID, 0.0)
    model.update(share_embeddings=joint, tie_output=tied and not joint, output_bias="output_bias" in state,
                 pad_in_softmax=pad_in_softmax)

    tags = {TAG.fullmatch(p).group(1): p for p in source_pieces if TAG.fullmatch(p)} if joint else {}
    files = {JOINT_FILE: hf.file("source.spm")} if _same(hf) else {SRC_FILE: hf.file("source.spm"),
                                                                   TGT_FILE: hf.file("target.spm")}
    order_pieces = pieces_in_order(source_pieces, source_order)
    vocab = Vocabulary(order_pieces, order_pieces if joint else pieces_in_order(target_pieces, target_order), tags)
    tokenizer = {"joint": joint, "vocab_size": vocab_size, "language_tags": "target_in_source" if tags else "none"}
    data = {"src_lang": str(tokenizer_config.get("source_lang") or "src"),
            "tgt_lang": str(tokenizer_config.get("target_lang") or "tgt")}
    return Converted(model, tokenizer, data, vocab, files, state)


def _same(hf: HFModel) -> bool:
    return hf.file("source.spm").read_bytes() == hf.file("target.spm").read_bytes()


def _check_positions(hf: HFModel, model: dict) -> None:
    """Older checkpoints store the sinusoid table: it must be the one nmt computes."""
    stored = hf.find("model.encoder.embed_positions.weight")
    if stored is None:
        return
    table = sinusoidal_table(model["max_positions"], model["d_model"])
    if stored.shape != table.shape or (stored.float() - table).abs().max() > 1e-4:
        raise refuse(hf, "model.encoder.embed_positions.weight", tuple(stored.shape),
                     "is not Vaswani's sinusoid table (learned positions?)")
