"""Transformer behaviour: shapes, incremental decoding, masks, padding, attention through SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.config import load_config
from nmt.model import Cache, CacheBuffers, Dropout, Transformer, keep_mask, sinusoidal_table

V = 40


def make_model(*overrides: str) -> Transformer:
    torch.manual_seed(0)
    config = load_config(None, ["model.preset=tiny", "model.dropout=0.0", *overrides])
    return Transformer(config.model, V, V).eval()


VARIANTS = [(), ("model.norm_first=false",), ("model.positions=learned", "model.activation=gelu"),
            ("model.share_embeddings=false", "tokenizer.joint=false")]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, V, (3, 9), generator=g)
    src[1, 6:] = 0  # padding
    tgt = torch.randint(4, V, (3, 7), generator=g)
    tgt[:, 0] = 0  # the decoder start (padding, a zero embedding)
    return src, tgt


@pytest.mark.parametrize("overrides", VARIANTS)
def test_forward_shape(overrides: tuple[str, ...]) -> None:
    src, tgt = batch()
    assert make_model(*overrides)(src, tgt).shape == (3, 7, V)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_incremental_decoding_equals_full_recompute(overrides: tuple[str, ...]) -> None:
    model = make_model(*overrides)
    src, tgt = batch()
    full = model(src, tgt)
    memory, src_mask = model.encode(src)
    for capacity in (64, 2):  # 2: the preallocated buffers must grow, keeping what they hold
        cache = model.new_cache(capacity=capacity)
        steps = [model.decode(tgt[:, i:i + 1], memory, src_mask, cache) for i in range(tgt.size(1))]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_beam_rows_share_their_sentence_memory() -> None:
    """Several decoder rows per sentence (a beam) against one memory row equal rows with copied memory."""
    model = make_model("model.norm_first=false")
    src, tgt = batch()
    G = 3
    memory, src_mask = model.encode(src)
    shared, copied = model.new_cache(), model.new_cache()
    rows = tgt.repeat_interleave(G, 0)
    rows[:, 1:] = torch.randint(4, V, rows[:, 1:].shape, generator=torch.Generator().manual_seed(3))
    for i in range(tgt.size(1)):
        a = model.decode(rows[:, i:i + 1], memory, src_mask, shared)
        b = model.decode(rows[:, i:i + 1], memory.repeat_interleave(G, 0), src_mask.repeat_interleave(G, 0), copied)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    order = torch.tensor([2, 0, 1, 4, 5, 3])  # reorder within sentences 0 and 1, drop sentence 2
    shared.reorder(order, torch.tensor([0, 1]))
    copied.reorder(order, order)  # one row per sentence there
    step = torch.full((6, 1), 7)
    torch.testing.assert_close(model.decode(step, memory[:2], src_mask[:2], shared),
                               model.decode(step, memory.repeat_interleave(G, 0)[order], src_mask.repeat_interleave(G, 0)[order], copied),
                               atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_buffers_are_reused_across_steps_and_caches() -> None:
    """Beam steps alternate between two buffers per key/value without allocating, and a second cache on
    the same buffers (the next batch) decodes exactly as a cache of its own."""
    model = make_model("model.norm_first=false")
    src, tgt = batch()
    memory, src_mask = model.encode(src)
    buffers = CacheBuffers(row_positions=tgt.numel())
    order = torch.tensor([1, 0, 2])

    def run(cache: Cache) -> list[torch.Tensor]:
        outputs = []
        for i in range(tgt.size(1)):
            outputs.append(model.decode(tgt[:, i:i + 1], memory, src_mask, cache))
            cache.reorder(order)
        return outputs

    run(model.new_cache(capacity=tgt.size(1), buffers=buffers))  # an earlier batch leaves its values behind
    held = {key: tensor.data_ptr() for key, tensor in buffers.tensors.items()}
    assert len(held) == 4 * len(model.decoder)  # keys and values, two buffers each
    shared, fresh = run(model.new_cache(capacity=tgt.size(1), buffers=buffers)), run(model.new_cache(capacity=tgt.size(1)))
    assert {key: tensor.data_ptr() for key, tensor in buffers.tensors.items()} == held
    for a, b in zip(shared, fresh):
        assert torch.equal(a, b)


def test_causal_mask_hides_the_future() -> None:
    model = make_model()
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 4:] = 5
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("overrides", VARIANTS[:2])
def test_padding_does_not_change_outputs(overrides: tuple[str, ...]) -> None:
    model = make_model(*overrides)
    src, tgt = batch()
    alone = model(src[1:2, :6], tgt[1:2])
    padded_src = torch.cat([src[1:2, :6], torch.zeros(1, 10, dtype=torch.long)], dim=1)
    padded_tgt = torch.cat([tgt[1:2], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :7], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(src, tgt)[1:2], alone, atol=1e-5, rtol=1e-5)


def test_attention_goes_through_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    src, tgt = batch()
    make_model()(src, tgt)
    # tiny: 2 encoder layers (self) + 2 decoder layers (causal self + cross)
    assert len(calls) == 6 and calls.count(True) == 2


def test_cpu_bf16_training_attends_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training under bf16 autocast on a CPU, SDPA gets fp32 queries, keys and values (its bf16 backward
    is an order of magnitude slower there) and the layers around it get bf16 back; the loss and
    gradients follow fp32 training to bf16 precision. Decoding (no gradient) stays in bf16."""
    dtypes = []
    original = F.scaled_dot_product_attention

    def recording(q, *args, **kwargs):
        dtypes.append(q.dtype)
        out = original(q, *args, **kwargs)
        assert out.dtype == q.dtype
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    src, tgt = batch()
    results = []
    for bf16 in (False, True):
        model = make_model().train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(src, tgt).float().logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), next(model.parameters()).grad))  # the (shared) embeddings'
    assert dtypes == [torch.float32] * 12
    torch.testing.assert_close(results[1][0], results[0][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=5e-2, atol=5e-2)
    dtypes.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        make_model()(src, tgt)
    assert dtypes == [torch.bfloat16] * 6


def test_shared_embeddings_are_one_tensor() -> None:
    model = make_model()
    assert model.src_embed.tokens.weight is model.tgt_embed.tokens.weight
    assert model.output is None
    separate = make_model("model.share_embeddings=false", "tokenizer.joint=false")
    assert separate.src_embed.tokens.weight is not separate.tgt_embed.tokens.weight


def test_sinusoidal_layout() -> None:
    table = sinusoidal_table(10, 8)
    assert torch.all(table[0, :4] == 0) and torch.all(table[0, 4:] == 1)  # sin(0), cos(0)
    torch.testing.assert_close(table[3, 1], torch.tensor(torch.sin(torch.tensor(3.0 / 10000 ** (2 / 8))).item()))


def test_position_limit_is_an_error() -> None:
    model = make_model("model.max_positions=8", "data.max_tokens_per_side=4")
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.ones(1, 9, dtype=torch.long) * 5, torch.ones(1, 3, dtype=torch.long))


def test_cross_attention_weights_are_distributions() -> None:
    model = make_model()
    src, tgt = batch()
    weights = model.cross_attention(src, tgt)
    assert len(weights) == 2 and weights[0].shape == (3, 4, 7, 9)  # layers; (B, H, T, S)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, 7))
    assert torch.all(weights[1][1, :, :, 6:] == 0)  # padding gets no attention
    torch.testing.assert_close(model(src, tgt), make_model()(src, tgt))  # recording changes nothing


def test_cpu_dropout_mask_drops_p_of_every_lane_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    for p in (0.1, 0.3):
        mask = keep_mask(x, p)
        scale = 1 / (1 - round(p * 65536) / 65536)
        values = mask.unique().tolist()
        assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(scale)
        # Each of the four 16-bit numbers cut from one 64-bit draw is uniform, the sign bit included.
        dropped = (mask.view(-1, 4) == 0).float().mean(0)
        assert torch.allclose(dropped, torch.full((4,), p), atol=0.004), dropped
        assert abs(mask.mean().item() - 1) < 0.005  # unbiased: the expected output is the input


def test_cpu_dropout_is_seeded_and_its_gradient_is_the_mask() -> None:
    dropout = Dropout(0.25).train()
    x = torch.randn(3, 7, 5, requires_grad=True)
    torch.manual_seed(4)
    y = dropout(x)
    torch.manual_seed(4)
    assert torch.equal(dropout(x), y)  # the global generator decides, so seeding and resume are exact
    y.sum().backward()
    assert torch.allclose(x.grad, (y / x).detach())
    assert ((x.grad == 0) | torch.isclose(x.grad, torch.tensor(1 / 0.75), atol=1e-4)).all()
    assert 0 < (x.grad == 0).sum() < x.numel()
    assert torch.equal(dropout.eval()(x), x)


def test_weights_with_separate_projections_load(tmp_path) -> None:
    """Checkpoints written before the attention projections were fused (q_proj, k_proj, v_proj apart,
    as MarianMT has them too) load into the fused layers and compute the same outputs."""
    from safetensors.torch import save_file

    from nmt import checkpoint
    from nmt.model import split_projections

    model = make_model("model.norm_first=false")
    separate = split_projections(model.state_dict())
    assert {"encoder.0.self_attn.q_proj.weight", "decoder.1.self_attn.v_proj.bias", "decoder.0.cross_attn.q_proj.weight",
            "decoder.0.cross_attn.k_proj.weight"} <= set(separate)
    assert not [name for name in separate if "qkv_proj" in name or "kv_proj" in name]
    assert separate["encoder.0.self_attn.k_proj.weight"].shape == (64, 64)
    save_file(checkpoint.weights_of(separate), str(tmp_path / "old.safetensors"))
    torch.manual_seed(5)
    fresh = Transformer(model.config, V, V).eval()
    checkpoint.load_weights(fresh, tmp_path / "old.safetensors")
    src, tgt = batch()
    assert torch.equal(fresh(src, tgt), model(src, tgt))



def test_fused_names_of_a_state_dict() -> None:
    from nmt.model import fused_names, split_projections

    state = make_model().state_dict()
    again = fused_names(split_projections(state))
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
