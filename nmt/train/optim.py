"""The optimizer side of an update: AdamW built fused, its learning-rate schedule, its step with the
gradient mean and clipping folded into one scale, the moving average of the weights, the bf16 twin
of the model, and optimizer states of older runs.

Each piece is a fixed handful of operators whatever the number of parameters (`torch._foreach_*`
and the fused AdamW kernel), so a GPU launches a few kernels per update here, not a few per tensor.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
from torch import nn

from nmt.config import TrainConfig
from nmt.precision import bucket_rows


def adamw(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW (CPU and CUDA): the fastest, and it takes the two device tensors `step` sets."""
    return torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                             eps=1e-8, fused=True)


# The parameters each train.freeze part holds, by name prefix.
FREEZE_PARTS = {"embeddings": ("src_embed.", "tgt_embed.", "output.", "output_bias"), "encoder": ("encoder.", "encoder_norm."),
                "decoder": ("decoder.", "decoder_norm.")}


def freeze(model: nn.Module, parts: Iterable[str]) -> list[nn.Parameter]:
    """Leave the parameters of `parts` (train.freeze: embeddings, encoder, decoder) as they are: no gradient,
    no optimizer state, no weight decay. Returns the parameters that train."""
    prefixes = tuple(p for part in parts for p in FREEZE_PARTS[part])
    for name, parameter in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            parameter.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def inverse_sqrt(warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup to 1 over `warmup_steps`, then decay with 1/sqrt(step)."""
    def factor(step: int) -> float:
        step += 1
        if warmup_steps == 0:
            return 1.0 / math.sqrt(step)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))
    return factor


def step(optimizer: torch.optim.AdamW, parameters: list[nn.Parameter], n_target: torch.Tensor, clip_norm: float,
         finite: torch.Tensor) -> torch.Tensor:
    """One AdamW step on gradients that are sums over `n_target` target tokens; returns `applied` (bool, on the device).

    The gradients are never divided in place: the fused kernel divides them by its `grad_scale`,
    which is set to n_target / clip, where clip = min(1, clip_norm / (|g| + 1e-6)) is
    `clip_grad_norm_`'s factor for the mean gradient g = sum / n_target. A non-finite gradient norm
    or `finite` False sets `found_inf`, and the kernel leaves weights and moments as they are. All of
    it stays on the device: the host never waits.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    scale = n_target.float()
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) / scale  # of the mean gradient
    applied = finite & torch.isfinite(norm)
    if clip_norm:
        scale = scale / (clip_norm / (norm + 1e-6)).clamp(max=1.0)
    optimizer.grad_scale = scale
    optimizer.found_inf = (~applied).float()  # 1: the fused step leaves weights and moments as they are
    optimizer.step()
    return applied


class MovingAverage:
    """An exponential moving average of a model's weights, kept in a copy of the model (so it saves
    and loads like one), updated by three `torch._foreach` calls over all parameters together."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self._averages, self._weights = list(self.model.parameters()), list(model.parameters())

    @torch.no_grad()
    def update(self, applied: torch.Tensor) -> None:
        """average += (1 - decay) * (weight - average), for an applied update only (`applied`: a device bool)."""
        rate = applied.float() * (1.0 - self.decay)  # 0 after a skipped update: the average stays exactly as it was
        steps = torch._foreach_sub(self._weights, self._averages)
        torch._foreach_mul_(steps, rate)
        torch._foreach_add_(self._averages, steps)


def upgrade_optimizer_state(state: dict, model: nn.Module) -> dict:
    """An optimizer state saved before the attention projections were fused, made to fit `model`.

    Such a state holds one entry per separate projection, in the old parameter order (q, k, v, out
    per attention, each weight then bias); the moments of the fused `qkv_proj`/`kv_proj` are those
    of its parts concatenated, as `model.fuse_projections` does with the weights. A current state
    is returned as it is.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]  # those the optimizer holds
    if sum(len(group["params"]) for group in state["param_groups"]) == len(names):
        return state
    old_names: list[str] = []
    for name in names:
        stem, _, kind = name.rpartition(".")
        layer, _, projection = stem.rpartition(".")
        if projection in ("qkv_proj", "kv_proj"):
            if kind == "weight":  # the parts' weights and biases, module by module
                old_names += [f"{layer}.{part}_proj.{k}" for part in projection.removesuffix("_proj") for k in ("weight", "bias")]
            continue
        old_names.append(name)
    if len(old_names) != sum(len(group["params"]) for group in state["param_groups"]):
        raise ValueError(f"the optimizer state holds {sum(len(g['params']) for g in state['param_groups'])} "
                         f"parameters, the model {len(names)}")
    old = {name: state["state"].get(index, {}) for index, name in enumerate(old_names)}
    upgraded = {}
    for index, name in enumerate(names):
        stem, _, kind = name.rpartition(".")
        layer, _, projection = stem.rpartition(".")
        parts = projection.removesuffix("_proj") if projection in ("qkv_proj", "kv_proj") else None
        entries = [old[f"{layer}.{part}_proj.{kind}"] for part in parts] if parts else [old[name]]
        if entries[0]:
            upgraded[index] = {key: torch.cat([e[key] for e in entries]) if key.startswith("exp_avg") else value
                               for key, value in entries[0].items()}
    group = {**state["param_groups"][0], "params": list(range(len(names)))}
    return {"state": upgraded, "param_groups": [group]}


class LowPrecisionCopy:
    """The model as the forward and backward under bf16 autocast use it: a twin whose linear layers
    hold bf16 copies of the weights and biases; every other parameter (embeddings, LayerNorm) is the
    model's own.

    Autocast casts each linear layer's weight and bias at each use and their gradients back to fp32,
    four operators per layer and update (about 260 of an update of the GPU profile). Here one
    `_foreach_copy_` refreshes all copies per update (`refresh`), and one more puts their gradients
    onto the fp32 weights after the backward (`hand_off`). The values are autocast's: the same
    rounding to bf16, the same bf16 gradients of the matrix multiplies, converted to fp32.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, row_bucket: int = 0) -> None:
        """`row_bucket` > 0: the twin's linear layers round their row counts up to a multiple of it (see
        `nmt.precision.RowBucketedLinear`; for bf16 on a CPU)."""
        self.module = copy.deepcopy(model)
        self.weights: list[nn.Parameter] = []  # the model's fp32 weights with a copy
        self.copies: list[nn.Parameter] = []
        output = getattr(model, "output", None)  # the loss projects with the model's own weight
        for original, twin in zip(model.modules(), self.module.modules()):
            copied = isinstance(original, nn.Linear) and original is not output  # a linear layer with bf16 copies
            if copied and row_bucket:
                bucket_rows(twin, row_bucket)
            for name, parameter in original.named_parameters(recurse=False):
                if copied:
                    setattr(twin, name, nn.Parameter(parameter.detach().to(dtype), requires_grad=parameter.requires_grad))
                    self.weights.append(parameter)
                    self.copies.append(getattr(twin, name))
                else:
                    setattr(twin, name, parameter)
        self._grads: list[torch.Tensor] = []  # fp32 gradient tensors of `weights`, allocated once

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the fp32 weights into their bf16 copies (after each optimizer step)."""
        torch._foreach_copy_(self.copies, self.weights)

    @torch.no_grad()
    def hand_off(self, first: bool) -> None:
        """Move the copies' gradients onto the fp32 weights: set them after an update's `first` backward, else add them."""
        if not self._grads:
            self._grads = [torch.zeros_like(w) for w in self.weights]
        grads = [c.grad if c.grad is not None else torch.zeros_like(c) for c in self.copies]
        (torch._foreach_copy_ if first else torch._foreach_add_)(self._grads, grads)
        for weight, grad, twin in zip(self.weights, self._grads, self.copies):
            weight.grad, twin.grad = grad, None

    def clear(self) -> None:
        """Drop the copies' gradients (an update abandoned after running out of memory)."""
        for twin in self.copies:
            twin.grad = None

