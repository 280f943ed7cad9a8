"""nmt's parameter names and Hugging Face's (MarianMT and M2M100 share theirs), in both directions: the
exporter writes through them and the importer reads through them."""

from __future__ import annotations

# nmt name -> Hugging Face name, per encoder / decoder layer.
ENCODER_LAYER = {"self_attn": "self_attn", "attn_block.norm": "self_attn_layer_norm", "ff.fc1": "fc1",
                 "ff.fc2": "fc2", "ff_block.norm": "final_layer_norm"}
DECODER_LAYER = {"self_attn": "self_attn", "self_block.norm": "self_attn_layer_norm", "cross_attn": "encoder_attn",
                 "cross_block.norm": "encoder_attn_layer_norm", "ff.fc1": "fc1", "ff.fc2": "fc2",
                 "ff_block.norm": "final_layer_norm"}
# The final layer norms of pre-norm stacks (M2M100's `layer_norm`).
FINAL_NORMS = {"encoder_norm": "model.encoder.layer_norm", "decoder_norm": "model.decoder.layer_norm"}


def hf_name(name: str) -> str:
    """Hugging Face's name of one nmt parameter (with the attention projections apart: q, k, v, out)."""
    if name.startswith(("src_embed.tokens.", "tgt_embed.tokens.")):
        return "model.shared.weight"
    for ours, theirs in FINAL_NORMS.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    stack, index, rest = name.split(".", 2)
    table = ENCODER_LAYER if stack == "encoder" else DECODER_LAYER
    for ours, theirs in table.items():
        if rest.startswith(ours + "."):
            return f"model.{stack}.layers.{index}.{theirs}{rest[len(ours):]}"
    raise KeyError(name)


def layer_names(stack: str, index: int) -> dict[str, str]:
    """nmt name -> Hugging Face name of every parameter of one layer, its attention projections apart."""
    table = ENCODER_LAYER if stack == "encoder" else DECODER_LAYER
    out = {}
    for ours, theirs in table.items():
        if ours in ("self_attn", "cross_attn"):
            for part in ("q", "k", "v", "out"):
                for kind in ("weight", "bias"):
                    out[f"{stack}.{index}.{ours}.{part}_proj.{kind}"] = (
                        f"model.{stack}.layers.{index}.{theirs}.{part}_proj.{kind}")
        else:
            for kind in ("weight", "bias"):
                out[f"{stack}.{index}.{ours}.{kind}"] = f"model.{stack}.layers.{index}.{theirs}.{kind}"
    return out
