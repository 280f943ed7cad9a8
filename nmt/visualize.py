"""Pictures of a run: training curves from metrics.jsonl and cross-attention alignment maps.

The PNG output needs the optional matplotlib (`pip install 'nmt[plot]'`); JSON output does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from nmt import atomic
from nmt.data import check_output_path
from nmt.errors import DataError, NMTError
from nmt.translator import Translator
from nmt.tokenizer import EOS_ID


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        raise NMTError("pictures need matplotlib: pip install 'nmt[plot]' (or use --format json)") from None
    return plt


def alignment(translator: Translator, sentence: str, beam: Optional[int] = None,
              decode: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Translate `sentence` (with `beam` and other decode settings overridden as in `Translator.translate`)
    and return its subword pieces with every decoder layer's cross-attention.

    `layers[l][h][t][s]` is how much target piece t (or the final EOS) attends to source piece s.
    """
    if not sentence.strip():
        raise DataError("--src is empty: give a sentence to translate")
    tok, model = translator.tokenizer_for(), translator.model  # with the run's language tags, where it has them
    translation = translator.translate([sentence], beam=beam, **(decode or {}))[0]
    src_ids = tok.encode_src([sentence.strip()])[0][: model.config.max_positions - 1] + [EOS_ID]
    tgt_ids = tok.encode_tgt([translation])[0][: model.config.max_positions - 1]
    src = torch.tensor([src_ids], device=translator.device)
    tgt_in = torch.tensor([[model.start_id] + tgt_ids], device=translator.device)
    weights = model.cross_attention(src, tgt_in)
    return {"source": sentence, "translation": translation,
            "source_pieces": tok.src_pieces(sentence.strip())[: len(src_ids) - 1] + ["</s>"],
            "target_pieces": tok.tgt_pieces(tgt_ids) + ["</s>"],
            "layers": [w[0].float().cpu().tolist() for w in weights]}


def plot_alignment(data: dict[str, Any], output: Path, layer: Optional[int] = None) -> Path:
    """Heatmaps averaged over heads: one per layer, or only `layer` (0-based)."""
    check_output_path(output)  # before drawing
    plt = _pyplot()
    layers = data["layers"] if layer is None else [data["layers"][layer]]
    names = list(range(len(data["layers"]))) if layer is None else [layer]
    src, tgt = data["source_pieces"], data["target_pieces"]
    width, height = max(4.0, 0.45 * len(src) + 1.5), max(3.0, 0.4 * len(tgt) + 1.5)
    fig, axes = plt.subplots(1, len(layers), figsize=(width * len(layers), height), squeeze=False)
    for ax, name, heads in zip(axes[0], names, layers):
        mean = torch.tensor(heads).mean(0).numpy()  # (T, S)
        ax.imshow(mean, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), src, rotation=90)
        ax.set_yticks(range(len(tgt)), tgt)
        ax.set_title(f"layer {name + 1}, mean over heads")
    fig.tight_layout()
    _save(fig, output)
    return output


def plot_curves(run_dir: Path, output: Path) -> Path:
    """Training and validation loss, validation BLEU and learning rate against steps."""
    check_output_path(output)  # before reading and drawing
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise DataError(f"{metrics}: not found; is {run_dir} a run directory made by `nmt train`?")
    records = []
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{metrics}:{number}: not a JSON line") from None
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    if not train:
        raise DataError(f"{metrics}: no training records yet")
    plt = _pyplot()
    fig, (loss_ax, bleu_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot([r["step"] for r in train], [r["nll"] for r in train], label="train (nll)")
    sets = sorted({name for r in valid for name in r.get("valid_sets", {})})
    if not sets:  # one validation set
        loss_ax.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation (nll)")
        scored = [r for r in valid if "valid_bleu" in r]
        bleu_ax.plot([r["step"] for r in scored], [r["valid_bleu"] for r in scored], "o-", color="tab:green")
    for name in sets:  # several (data.valid's names): one curve each
        found = [(r["step"], r["valid_sets"][name]) for r in valid if name in r.get("valid_sets", {})]
        loss_ax.plot([step for step, _ in found], [f["loss"] for _, f in found], "o-", label=f"{name} (nll)")
        scored = [(step, f["bleu"]) for step, f in found if "bleu" in f]
        bleu_ax.plot([step for step, _ in scored], [b for _, b in scored], "o-", label=name)
    if sets:
        bleu_ax.legend()
    loss_ax.set(xlabel="step", ylabel="loss per target token", title="loss")
    loss_ax.legend()
    bleu_ax.set(xlabel="step", ylabel="sacreBLEU", title="validation BLEU")
    lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:red")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    _save(fig, output)
    return output


def _save(fig, output: Path) -> None:
    """Write the figure through a temporary file so a failed write leaves nothing half-done."""
    try:
        atomic.save(output, lambda tmp: fig.savefig(tmp, dpi=120))  # the format follows the suffix
    finally:
        fig.clf()
