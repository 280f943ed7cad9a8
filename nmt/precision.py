"""What each precision setting means on each device, and the CPU bf16 layers and switches that make bf16
fast on a CPU.

`auto` means two different things for training and for decoding, side by side here:

- training (`train.precision`): bf16 autocast where the device multiplies bf16 in hardware (every
  CUDA device, a CPU with AMX), else fp32. A bf16 update is as good as an fp32 one (the weights and
  the optimizer stay in fp32), and faster where the hardware has bf16 matrix units.
- decoding (`decode.precision`): bf16 on CUDA, fp32 on every CPU, AMX or not. In bf16 on a CPU a
  sentence's translation depends on the sentences batched with it (the attention kernels sum padded
  rows in another order, one bf16 unit apart once rounded: bench/README.md counts the lines that
  change), so a server, which batches whatever requests arrive together, could answer differently
  from `nmt translate` of the same line. fp32 keeps that difference below the beam's ties.

On a CPU, bf16 needs help from nmt's own layers: oneDNN builds a kernel for every new matrix shape,
so `RowBucketedLinear` rounds row counts up, decoding's `PackedLinear` lays the weight out once,
and `CPU_BF16_WORKAROUNDS` (read by the attention and the loss) keeps the CPU attention in fp32
and the loss's chunks whole. The figures behind each choice are in bench/README.md.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from nmt.model import Transformer

# What bf16 on a CPU does differently, for its kernels' sake: the attention computes in fp32 (see
# `nmt.model.Attention._sdpa`), the training twin's linear layers round their rows up
# (`RowBucketedLinear`) and the loss pads its last chunk (`nmt.train.loss`). A tool that counts on
# a CPU the operators a GPU update dispatches turns it off (bench/profile_ops.py).
CPU_BF16_WORKAROUNDS = True

# Row counts of bf16 linear layers are rounded up to a multiple of these on a CPU.
TRAIN_ROW_BUCKET = 256  # training: a few dozen shapes recur over token-budget batches
DECODE_ROW_BUCKET = 64  # decoding: a beam step's rows change as sentences finish


def bf16_is_native(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: every CUDA device nmt runs on, and a CPU
    with AMX tiles (Intel Xeon from Sapphire Rapids on). Other CPUs have no bf16 matrix units."""
    if device.type == "cuda":
        return True
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch; absent means unknown
    return device.type == "cpu" and probe is not None and bool(probe())


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """What train.precision (auto, fp32 or bf16) means on `device`: bf16 autocast, or fp32. auto is bf16
    where the device multiplies bf16 in hardware (`bf16_is_native`)."""
    return precision == "bf16" or (precision == "auto" and bf16_is_native(device))


def decoding_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """What decode.precision (auto, fp32 or bf16) means on `device`: bf16 is auto's choice on CUDA only."""
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return torch.float32


def train_row_bucket(device: torch.device) -> int:
    """The row bucket of the bf16 training twin's linear layers on `device` (0: none)."""
    return TRAIN_ROW_BUCKET if device.type == "cpu" and CPU_BF16_WORKAROUNDS else 0


class RowBucketedLinear(nn.Linear):
    """A linear layer whose matrix multiplies see a row count rounded up to a multiple of `row_bucket`
    (zero rows added, their outputs dropped).

    oneDNN, which runs bf16 matrix multiplies on a CPU, builds a kernel for every new shape, which
    costs several times the multiply itself. Token-budget batches give almost every update new row
    counts (batch x length), so bf16 training built kernels all the time and slowed as oneDNN's cache
    of kernels churned; rounded up, a few dozen shapes recur. Subclasses may multiply otherwise
    (`_multiply`; decoding's `PackedLinear`).
    """

    row_bucket: int  # set on the instance or the subclass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        padded = -(-rows // self.row_bucket) * self.row_bucket
        flat = x.reshape(rows, x.size(-1))
        if padded != rows:
            flat = F.pad(flat, (0, 0, 0, padded - rows))
        out = self._multiply(flat)
        return out[:rows].view(*x.shape[:-1], out.size(-1))

    def _multiply(self, flat: torch.Tensor) -> torch.Tensor:
        """(rows, in) -> (rows, out), rows a multiple of `row_bucket`."""
        return F.linear(flat, self.weight, self.bias)


def bucket_rows(layer: nn.Linear, row_bucket: int) -> None:
    """Make `layer` a `RowBucketedLinear` in place (its parameters stay as they are)."""
    layer.__class__, layer.row_bucket = RowBucketedLinear, row_bucket


class PackedLinear(RowBucketedLinear):
    """A bf16 linear layer for decoding on a CPU: its weight laid out once in oneDNN's blocked format,
    the bias added inside the multiply, the row count rounded up to a multiple of `row_bucket`.

    torch's bf16 `linear` on a CPU lays the weight out anew at every call and adds the bias in a
    pass of its own, and oneDNN builds a kernel for every new row count. Inference only: `packed`
    is a copy, which a change to `weight` would not reach.
    """

    row_bucket = DECODE_ROW_BUCKET
    packed: torch.Tensor  # set by `pack_linear_layers`

    def _multiply(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")


@functools.cache  # once per process
def _packed_linear_works() -> bool:
    """Whether this torch and CPU run oneDNN's packed bf16 linear (internal ops, which a build
    without oneDNN, or a CPU oneDNN has no bf16 kernels for, may lack): tried once on a small layer."""
    try:
        w, x = torch.randn(8, 16, dtype=torch.bfloat16), torch.randn(3, 16, dtype=torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w), None, "none", [], "")
        return torch.allclose(out.float(), F.linear(x, w).float(), rtol=0.05, atol=0.05)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack_linear_layers(model: "Transformer") -> "Transformer":
    """Make a bf16 model's linear layers on a CPU `PackedLinear`s, in place, the tied output projection
    too (as `model.output`, sharing the embedding's weight); return the model. Anything else, or a
    torch without oneDNN's packed linear, is returned as it is."""
    weight = model.tgt_embed.tokens.weight
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not _packed_linear_works():
        return model
    if model.output is None:
        model.output = nn.Linear(weight.size(1), weight.size(0), bias=False)
        model.output.weight = weight
    for module in model.modules():
        if type(module) is nn.Linear:
            module.packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach())
            module.__class__ = PackedLinear
    return model


def decoding_model(model: "Transformer", precision: str, device: torch.device | str) -> "Transformer":
    """The model itself when its weights are in decode.precision's dtype on `device`, else a copy in it
    (training's fp32 weights decoded in bf16 for validation: one copy of the weights costs less than
    autocast's casts at every step; a bf16 copy on a CPU gets `pack_linear_layers`)."""
    dtype = decoding_dtype(precision, device)
    if model.tgt_embed.tokens.weight.dtype == dtype:
        return model
    return pack_linear_layers(copy.deepcopy(model).to(dtype))
