"""What every import shares: the result (nmt's config sections, vocabulary, SentencePiece files and weights),
the reordering of a vocabulary into nmt's special ids, the layers' weights under nmt's names, and the
refusal of what nmt cannot hold exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from nmt.errors import NMTError
from nmt.importing.names import FINAL_NORMS, layer_names
from nmt.importing.source import HFModel
from nmt.model import fused_names
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary


class UnsupportedModel(NMTError):
    """The model has a feature nmt's transformer cannot hold exactly; the message names the field."""


@dataclass
class Converted:
    """A model in nmt's terms: config sections (`model`, `tokenizer`, `data`), its vocabulary, the SentencePiece
    files to copy (nmt's file name -> the source file), and its weights under nmt's names."""

    model: dict[str, Any]
    tokenizer: dict[str, Any]
    data: dict[str, Any]
    vocab: Vocabulary
    spm: dict[str, Path]
    weights: dict[str, torch.Tensor] = field(repr=False)
    notes: list[str] = field(default_factory=list)  # what the import left out on purpose (layerdrop, ...)


def refuse(hf: HFModel, name: str, value: Any, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{hf.where}: {name}={value!r} {why}; nmt imports only what it computes exactly")


def require(hf: HFModel, name: str, allowed: tuple, why: str = "is not supported") -> Any:
    """config[name], refused unless it is one of `allowed`."""
    value = hf.config.get(name, allowed[0])
    if value not in allowed:
        raise refuse(hf, name, value, why)
    return value


def nmt_order(size: int, pad: int, unk: int, eos: int, bos: Optional[int]) -> list[int]:
    """The model's id of every nmt id: nmt's specials first (PAD_ID, UNK_ID, BOS_ID, EOS_ID), then the model's
    other ids in their order. A model without a BOS gets a new id for it (-1 here: a row of zeros that
    is never produced)."""
    specials = {PAD_ID: pad, UNK_ID: unk, BOS_ID: -1 if bos is None else bos, EOS_ID: eos}
    assert sorted(specials) == [0, 1, 2, 3]
    taken = {v for v in specials.values() if v >= 0}
    if len(taken) != sum(v >= 0 for v in specials.values()):
        raise UnsupportedModel(f"special ids pad={pad}, unk={unk}, eos={eos}, bos={bos} are not distinct")
    return [specials[i] for i in range(4)] + [i for i in range(size) if i not in taken]


def reorder(rows: torch.Tensor, order: list[int], fill: float = 0.0) -> torch.Tensor:
    """`rows` (V, ...) in nmt's order (`nmt_order`); a new id's row is `fill`."""
    index = torch.tensor([max(i, 0) for i in order])
    out = rows.index_select(0, index)
    new = [n for n, i in enumerate(order) if i < 0]
    if new:
        out[new] = fill
    return out


def pieces_in_order(pieces: list[str], order: list[int], new_name: str = "<s>") -> list[str]:
    """The piece of every nmt id (a new BOS is named `new_name`, or a name no piece has)."""
    name = new_name
    while name in pieces:
        name = f"<nmt-{name.strip('<>')}>"
    return [pieces[i] if i >= 0 else name for i in order]


def layers(hf: HFModel, n_encoder: int, n_decoder: int, final_norms: bool) -> dict[str, torch.Tensor]:
    """Every layer's weights under nmt's names, attention projections fused as nmt holds them."""
    state: dict[str, torch.Tensor] = {}
    for stack, count in (("encoder", n_encoder), ("decoder", n_decoder)):
        for index in range(count):
            for ours, theirs in layer_names(stack, index).items():
                state[ours] = _tensor(hf, theirs)
    if final_norms:
        for ours, theirs in FINAL_NORMS.items():
            for kind in ("weight", "bias"):
                state[f"{ours}.{kind}"] = _tensor(hf, f"{theirs}.{kind}")
    return fused_names(state)


def _tensor(hf: HFModel, name: str) -> torch.Tensor:
    try:
        return hf.tensor(name).float()
    except KeyError:
        raise UnsupportedModel(f"{hf.where}: the weights have no {name}; is config.json's architecture the weights'?") from None


def sizes(hf: HFModel, scale_default: bool) -> dict[str, Any]:
    """The transformer's sizes (the same keys in MarianMT's and M2M100's configs), refused where nmt's
    encoder and decoder would differ; `scale_default` is the family's scale_embedding default."""
    c = hf.config
    for ours, theirs in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if c.get(ours) != c.get(theirs):
            raise refuse(hf, theirs, c.get(theirs), f"differs from {ours}={c.get(ours)!r}")
    activation = require(hf, "activation_function", ("relu", "gelu", "swish", "silu"))
    return {"d_model": c["d_model"], "n_heads": c["encoder_attention_heads"], "n_encoder_layers": c["encoder_layers"],
            "n_decoder_layers": c["decoder_layers"], "d_ff": c["encoder_ffn_dim"],
            "activation": "swish" if activation == "silu" else activation,
            "dropout": float(c.get("dropout", 0.1)), "attention_dropout": float(c.get("attention_dropout", 0.0)),
            "activation_dropout": float(c.get("activation_dropout", 0.0)),
            "max_positions": int(c["max_position_embeddings"]),
            "scale_embeddings": bool(c.get("scale_embedding", scale_default))}
