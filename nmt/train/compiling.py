"""torch.compile for training: when it is used, the compiled model with dynamic shapes and a fallback, and
its compilation on a fixed made-up batch."""

from __future__ import annotations

import logging
from typing import Callable, ContextManager

import torch

from nmt.config import TrainConfig
from nmt.model import Transformer

log = logging.getLogger("nmt.train")


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether the model runs under torch.compile: `train.compile`, where `auto` means on CUDA only.

    On CUDA the compiled step fuses the element-wise work between the matrix multiplies into a few
    kernels, where eager mode launches one per operator; on a CPU inductor's kernels measured no
    faster than eager's (bench/README.md), and compiling costs a minute or more up front.
    """
    return device.type == "cuda" if config.compile == "auto" else bool(config.compile)


def compile_model(net: torch.nn.Module, backend: str | Callable = "inductor",
                  fallback: bool = False) -> Callable[..., torch.Tensor]:
    """`net` under torch.compile with dynamic shapes: one graph (encoder and decoder) for batches of any size.

    Sizes that happen to be equal in a batch (its source and target lengths, say) are not taken to
    be equal always (dynamo's "duck sizing"), which would compile again at the next batch where they
    differ, and again at each new coincidence. A batch of one sentence compiles once more (dynamo
    specialises sizes of 1). With `fallback` (`train.compile: auto`), a compiler that fails (no
    working triton, a GPU too old for it) leaves a warning and the eager model, not a crash.
    """
    from torch.fx.experimental import _config as shape_config

    compiled = torch.compile(net, dynamic=True, backend=backend)
    eager = False

    def run(*args, **kwargs) -> torch.Tensor:
        nonlocal eager
        if not eager:
            try:
                with shape_config.patch(use_duck_shape=False):
                    return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (the eager call below raises any error of the model itself)
                if not fallback or isinstance(exc, torch.OutOfMemoryError):
                    raise
                eager = True
                log.warning("torch.compile failed, training without it (train.compile: false skips the attempt): %s",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return net(*args, **kwargs)
    return run


def compile_on_fixed_shapes(model: Transformer, loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                            autocast: Callable[[], ContextManager], device: torch.device) -> None:
    """Compile the step (forward and backward) on a made-up batch of fixed shape, leaving no trace but
    gradients, which the caller drops: `loss_of(inputs)` runs the (compiled) forward on collated inputs.

    Inductor picks its kernels by the sizes of the batch it compiles on, so a run compiled on its
    first batch and one resumed at a later batch would compute with different kernels and drift
    apart in the last bits. Compiled on the same made-up batch, they use the same ones and resume
    exactly. The RNG states are put back.
    """
    B, S, T = 16, 21, 22
    tokens = torch.Generator().manual_seed(0)
    x = {"src": torch.randint(4, model.src_embed.tokens.num_embeddings, (B, S), generator=tokens),
         "tgt_in": torch.randint(4, model.tgt_embed.tokens.num_embeddings, (B, T), generator=tokens),
         "targets": torch.arange(B * T)}
    x["tgt_out"] = x["tgt_in"]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with autocast():
            loss = loss_of({k: v.to(device) for k, v in x.items()})
        loss.backward()
