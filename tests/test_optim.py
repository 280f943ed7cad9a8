"""The optimizer step with its folded gradient scale, the moving average, and optimizer states of older runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nmt.train import optim
from nmt.train.optim import LowPrecisionCopy
from nmt.config import load_config
from nmt.model import Transformer, split_projections
from nmt.precision import RowBucketedLinear

# The parameter order of a 1+1-layer model before the attention projections were fused.
SEPARATE_PROJECTIONS = [
    "src_embed.tokens.weight",
    *[f"encoder.0.self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")],
    "encoder.0.self_attn.out_proj.weight", "encoder.0.self_attn.out_proj.bias",
    "encoder.0.ff.fc1.weight", "encoder.0.ff.fc1.bias", "encoder.0.ff.fc2.weight", "encoder.0.ff.fc2.bias",
    "encoder.0.attn_block.norm.weight", "encoder.0.attn_block.norm.bias",
    "encoder.0.ff_block.norm.weight", "encoder.0.ff_block.norm.bias",
    *[f"decoder.0.self_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")],
    "decoder.0.self_attn.out_proj.weight", "decoder.0.self_attn.out_proj.bias",
    *[f"decoder.0.cross_attn.{p}_proj.{k}" for p in "qkv" for k in ("weight", "bias")],
    "decoder.0.cross_attn.out_proj.weight", "decoder.0.cross_attn.out_proj.bias",
    "decoder.0.ff.fc1.weight", "decoder.0.ff.fc1.bias", "decoder.0.ff.fc2.weight", "decoder.0.ff.fc2.bias",
    "decoder.0.self_block.norm.weight", "decoder.0.self_block.norm.bias",
    "decoder.0.cross_block.norm.weight", "decoder.0.cross_block.norm.bias",
    "decoder.0.ff_block.norm.weight", "decoder.0.ff_block.norm.bias",
    "encoder_norm.weight", "encoder_norm.bias", "decoder_norm.weight", "decoder_norm.bias",
]


def small_model() -> Transformer:
    torch.manual_seed(0)
    config = load_config(None, ["model.preset=tiny", "model.n_encoder_layers=1", "model.n_decoder_layers=1"])
    return Transformer(config.model, 40, 40)


@pytest.mark.parametrize("clip_norm", [0.0, 1e-3, 100.0])
def test_step_divides_summed_gradients_and_clips_like_clip_grad_norm(clip_norm: float) -> None:
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    sums = [torch.randn(5, 3) * 50, torch.randn(7) * 50]  # gradients summed over 37 target tokens
    config = load_config(None, ["train.lr=0.01"]).train
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(ours, sums):
        p.grad = g.clone()
    applied = optim.step(optim.adamw(ours, config), ours, torch.tensor(37.0, dtype=torch.float64), clip_norm,
                         torch.tensor(True))
    reference = [torch.nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(reference, sums):
        p.grad = g / 37
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(reference, clip_norm)
    optim.adamw(reference, config).step()
    assert applied.item()
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_step_skips_a_non_finite_gradient() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("nan"), 2.0])
    optimizer = optim.adamw([p], load_config().train)
    assert not optim.step(optimizer, [p], torch.tensor(4.0), 1.0, torch.tensor(True)).item()
    assert torch.equal(p.detach(), torch.ones(3))


def test_optimizer_state_with_separate_projections_is_upgraded() -> None:
    """A state saved in the separate-projection order gets each fused parameter's moments concatenated
    (q, k, v) like its weight, and every other parameter's moments unchanged."""
    model = small_model()
    shapes = {name: t.shape for name, t in split_projections(model.state_dict()).items()}
    old = {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(len(SEPARATE_PROJECTIONS)))}]}
    for index, name in enumerate(SEPARATE_PROJECTIONS):
        old["state"][index] = {"step": torch.tensor(3.0), "exp_avg": torch.full(shapes[name], float(index)),
                               "exp_avg_sq": torch.full(shapes[name], float(index) + 0.5)}
    new = optim.upgrade_optimizer_state(old, model)
    optimizer = optim.adamw(model.parameters(), load_config().train)
    optimizer.load_state_dict(new)
    parameters = dict(model.named_parameters())
    for name, parameter in parameters.items():
        state = optimizer.state[parameter]
        parts = [name.replace("qkv_proj", f"{p}_proj") for p in "qkv"] if "qkv_proj" in name else \
            [name.replace("kv_proj", f"{p}_proj") for p in "kv"] if "kv_proj" in name else [name]
        expected = torch.cat([torch.full(shapes[part], float(SEPARATE_PROJECTIONS.index(part))) for part in parts])
        assert torch.equal(state["exp_avg"], expected), name
        assert torch.equal(state["exp_avg_sq"], expected + 0.5) and state["step"].item() == 3.0
    assert optim.upgrade_optimizer_state(new, model) is new  # a current state is left alone


def test_moving_average_is_three_foreach_calls() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Operators(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = small_model()
    average = optim.MovingAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    applied = torch.tensor(True)
    with Operators() as seen:
        average.update(applied)
    assert [n for n in seen.names if n.startswith("_foreach")] == ["_foreach_sub", "_foreach_mul_", "_foreach_add_"]
    assert len(seen.names) == 5  # and two for the rate
    for a, w in zip(average.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, w - 0.9)
    before = [a.clone() for a in average.model.parameters()]
    average.update(torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(average.model.parameters(), before))


@pytest.mark.parametrize("shape", [(3, 7, 16), (2, 64, 16)])  # 21 rows padded to 32; 128 rows as they are
def test_row_bucketed_linear_equals_linear(shape: tuple[int, ...]) -> None:
    """The padded rows change nothing: same outputs, same gradients of the input, weight and bias."""
    torch.manual_seed(0)
    plain = nn.Linear(16, 24)
    bucketed = copy.deepcopy(plain)
    bucketed.__class__, bucketed.row_bucket = RowBucketedLinear, 32
    x = torch.randn(shape)
    outputs = []
    for layer in (plain, bucketed):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        (y * torch.arange(y.numel()).view(y.shape)).sum().backward()
        outputs.append((y, xi.grad, layer.weight.grad, layer.bias.grad))
    assert outputs[1][0].shape == (*shape[:-1], 24)
    for expected, found in zip(*outputs):
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


def test_low_precision_copy_buckets_rows_on_request() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    twin = LowPrecisionCopy(model, torch.bfloat16, row_bucket=256).module
    assert [type(m) for m in twin] == [RowBucketedLinear, nn.LayerNorm, RowBucketedLinear]
    assert all(type(m) is not RowBucketedLinear for m in LowPrecisionCopy(model, torch.bfloat16).module)
