"""M2M100 and NLLB-200 (`M2M100ForConditionalGeneration`) in nmt's terms.

Pre-norm layers with a final layer norm on the encoder and on the decoder, fairseq's sinusoids
(`positions: sinusoidal_fairseq`), `</s>` as the decoder's start, one vocabulary for both sides and
the output. Ids are fairseq's: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, then the SentencePiece
model's pieces (NLLB: SentencePiece id + 1; M2M100: as `vocab.json` says), then the language codes
(`deu_Latn`, `__de__`) and `<mask>`. A source is `[source tag] text </s>`, and the target's tag is
forced as the first output (`tokenizer.language_tags: source_and_forced_target`).
"""

from __future__ import annotations

import re
from typing import Any

import sentencepiece as spm

from nmt.importing.convert import Converted, UnsupportedModel, layers, nmt_order, pieces_in_order, refuse, reorder, require, sizes
from nmt.importing.source import HFModel
from nmt.tokenizer import JOINT_FILE, Vocabulary

M2M_TAG = re.compile(r"__([A-Za-z_-]+)__")
NLLB_TAG = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
SPM_FILE = "sentencepiece.bpe.model"


def _tag_code(piece: str) -> str | None:
    found = M2M_TAG.fullmatch(piece)
    if found:
        return found.group(1)
    return piece if NLLB_TAG.fullmatch(piece) else None


def _added_tokens(hf: HFModel, base: int) -> dict[int, str]:
    """The tokenizer's added tokens (language codes, <mask>) with their ids: as tokenizer.json or
    tokenizer_config.json number them, else (M2M100's tokenizer) its language codes in order after the
    `base` ids of vocab.json, `__xx__` each."""
    found: dict[int, str] = {}
    if hf.has("tokenizer.json"):
        found = {int(t["id"]): t["content"] for t in hf.json("tokenizer.json").get("added_tokens", [])}
    config: dict[str, Any] = hf.json("tokenizer_config.json") if hf.has("tokenizer_config.json") else {}
    found.update({int(i): t["content"] for i, t in config.get("added_tokens_decoder", {}).items()})
    if any(_tag_code(piece) for piece in found.values()):
        return found
    listed = config.get("additional_special_tokens") or (hf.json("special_tokens_map.json").get(
        "additional_special_tokens") if hf.has("special_tokens_map.json") else None)
    if not listed and config.get("language_codes"):  # M2M100's tokenizer names its code list only
        try:
            from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES
        except ImportError:
            raise refuse(hf, "language_codes", config["language_codes"], "needs transformers installed to be read "
                         "(pip install 'nmt[export]')") from None
        listed = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES.get(config["language_codes"], [])]
    listed = [t["content"] if isinstance(t, dict) else t for t in listed or []]
    found.update({base + i: token for i, token in enumerate(listed)})
    return found


def _pieces(hf: HFModel, size: int) -> list[str]:
    """The piece of every id of the model."""
    pieces = [""] * size
    if hf.has("vocab.json"):  # M2M100
        mapping = hf.json("vocab.json")
        for piece, index in mapping.items():
            if 0 <= index < size:
                pieces[index] = piece
        base = len(mapping)
    else:  # NLLB: fairseq's four specials, then SentencePiece's pieces after its own three, one id up
        processor = spm.SentencePieceProcessor(model_file=str(hf.file(SPM_FILE)))
        for index, piece in enumerate(["<s>", "<pad>", "</s>", "<unk>"]):
            pieces[index] = piece
        for piece_id in range(3, min(processor.get_piece_size(), size - 1)):
            pieces[piece_id + 1] = processor.id_to_piece(piece_id)
        base = processor.get_piece_size() + 1
    for index, piece in _added_tokens(hf, base).items():
        if 0 <= index < size:
            pieces[index] = piece
    for index in (i for i, p in enumerate(pieces) if not p):
        pieces[index] = f"<unused{index}>"
    return pieces


def convert(hf: HFModel) -> Converted:
    c = hf.config
    model = {**sizes(hf, scale_default=True), "norm_first": True, "positions": "sinusoidal_fairseq",
             "decoder_start": "eos", "share_embeddings": True, "pad_in_softmax": True, "preset": "base"}
    pad, eos = int(c.get("pad_token_id", 1)), int(c.get("eos_token_id", 2))
    require(hf, "pad_token_id", (1,), "moves fairseq's positions (nmt's sinusoidal_fairseq starts them at 2)")
    require(hf, "decoder_start_token_id", (eos,), "is not </s>, which M2M100 and NLLB start from")
    require(hf, "tie_word_embeddings", (True,), "(an output projection apart from the embeddings)")
    tokenizer_config = hf.json("tokenizer_config.json") if hf.has("tokenizer_config.json") else {}
    if tokenizer_config.get("legacy_behaviour"):
        raise refuse(hf, "legacy_behaviour", True, "puts the source's language tag after the text")
    size = int(c["vocab_size"])
    pieces = _pieces(hf, size)
    if "<unk>" not in pieces:
        raise UnsupportedModel(f"{hf.where}: the vocabulary has no <unk>")
    bos = c.get("bos_token_id")
    order = nmt_order(size, pad, pieces.index("<unk>"), eos, int(bos) if bos is not None else None)
    state = layers(hf, model["n_encoder_layers"], model["n_decoder_layers"], final_norms=True)
    state["src_embed.tokens.weight"] = reorder(hf.tensor("model.shared.weight").float(), order)
    notes = [f"{name}={c[name]} (training-time layer dropping) is not applied"
             for name in ("encoder_layerdrop", "decoder_layerdrop") if c.get(name)]
    ordered = pieces_in_order(pieces, order)
    tags = {code: piece for piece in ordered if (code := _tag_code(piece)) is not None}
    if not tags:
        raise UnsupportedModel(f"{hf.where}: no language codes among the tokenizer's tokens (tokenizer.json or "
                               "tokenizer_config.json's added tokens)")
    tokenizer = {"joint": True, "vocab_size": len(ordered), "language_tags": "source_and_forced_target"}
    data = {"src_lang": str(tokenizer_config.get("src_lang") or ""), "tgt_lang": str(tokenizer_config.get("tgt_lang") or "")}
    return Converted(model, tokenizer, data, Vocabulary(ordered, ordered, tags), {JOINT_FILE: hf.file(SPM_FILE)},
                     state, notes)
