"""Search: beam 1 equals greedy, beam search matches a plain reference, batching changes nothing."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import nmt.decode
import nmt.precision
from nmt.config import load_config
from nmt.decode import output_limits, translate_ids
from nmt.precision import PackedLinear, decoding_dtype, decoding_model, pack_linear_layers
from nmt.search import beam_search, greedy_search, top_k
from nmt.model import Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

V = 24


def make_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = load_config(None, ["model.preset=tiny", "model.dropout=0.0"])
    model = Transformer(config.model, V, V).eval()
    with torch.no_grad():  # make EOS moderately likely so hypotheses end at varied lengths
        model.tgt_embed.tokens.weight[EOS_ID] *= 3
    return model


def sources(n: int = 6, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, V, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def padded(srcs: list[list[int]]) -> torch.Tensor:
    longest = max(len(s) for s in srcs) + 1
    return torch.tensor([s + [EOS_ID] + [PAD_ID] * (longest - len(s) - 1) for s in srcs])


def reference_beam(model: Transformer, src: list[int], beam: int, max_len: int, alpha: float) -> list[tuple[list[int], float]]:
    """One sentence, full recomputation each step, plain Python bookkeeping."""
    memory, mask = model.encode(torch.tensor([src + [EOS_ID]]))
    beams, finished = [([model.start_id], 0.0)], []
    for step in range(max_len):
        candidates = []
        for tokens, score in beams:
            logits = model.decode(torch.tensor([tokens]), memory, mask)[0, -1]
            log_probs = torch.log_softmax(logits.float(), -1)
            log_probs[PAD_ID] = log_probs[BOS_ID] = -math.inf
            if step + 1 >= max_len:
                keep = log_probs[EOS_ID].item()
                log_probs[:] = -math.inf
                log_probs[EOS_ID] = keep
            for token in range(V):
                if log_probs[token] > -math.inf:
                    candidates.append((score + log_probs[token].item(), tokens + [token]))
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[: 2 * beam]
        for rank, (score, tokens) in enumerate(candidates[:beam]):
            if tokens[-1] == EOS_ID and len(finished) < beam:
                finished.append((tokens[1:-1], score / (step + 1) ** alpha))
        if len(finished) >= beam:
            break
        beams = [(t, s) for s, t in candidates if t[-1] != EOS_ID][:beam]
    return sorted(finished, key=lambda f: -f[1])


@torch.no_grad()
def test_beam_one_equals_greedy() -> None:
    model, srcs = make_model(), sources(8)
    src = padded(srcs)
    limits = output_limits(torch.tensor([len(s) for s in srcs]), load_config().decode, 64)
    greedy = greedy_search(model, src, limits)
    beam = beam_search(model, src, limits, beam=1)
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]
    for g, b in zip(greedy, beam):
        assert math.isclose(g[0].log_prob, b[0].log_prob, rel_tol=1e-5, abs_tol=1e-5)


@torch.no_grad()
def test_beam_search_matches_reference() -> None:
    model, srcs = make_model(3), sources(5, seed=4)
    limits = torch.tensor([7, 5, 8, 6, 7])  # sentences end at different steps and leave the batch
    hyps = beam_search(model, padded(srcs), limits, beam=4, length_penalty=0.8, nbest=4)
    for src, limit, found in zip(srcs, limits.tolist(), hyps):
        expected = reference_beam(model, src, beam=4, max_len=limit, alpha=0.8)
        assert [h.tokens for h in found] == [tokens for tokens, _ in expected]
        for h, (_, score) in zip(found, expected):
            assert math.isclose(h.score, score, rel_tol=1e-4, abs_tol=1e-4)


@torch.no_grad()
def test_nbest_sorted_and_lengths_bounded() -> None:
    model, srcs = make_model(), sources(4)
    limits = torch.tensor([3, 5, 4, 6])
    hyps = beam_search(model, padded(srcs), limits, beam=4, nbest=3)
    for limit, found in zip(limits.tolist(), hyps):
        assert len(found) == 3
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        assert all(len(h.tokens) + 1 <= limit for h in found)


@torch.no_grad()
def test_batching_and_order_do_not_change_translations() -> None:
    model, srcs = make_model(), sources(9, seed=7)
    config = load_config(None, ["decode.beam=3"]).decode
    one_by_one = [translate_ids(model, [s], config)[0][0].tokens for s in srcs]
    batched = [h[0].tokens for h in translate_ids(model, srcs, config)]
    small_batches = [h[0].tokens for h in translate_ids(model, srcs, load_config(None, ["decode.beam=3", "decode.max_tokens=40"]).decode)]
    assert batched == one_by_one == small_batches
    assert translate_ids(model, [], config) == []  # nothing to translate is not an error


def test_worker_processes_change_nothing() -> None:
    """Batches decoded in forked workers come back in input order, with the same hypotheses."""
    model, srcs = make_model(), sources(12, seed=3)
    config = load_config(None, ["decode.beam=3", "decode.max_tokens=40", "decode.nbest=2"]).decode
    done: list[int] = []
    alone = translate_ids(model, srcs, config)
    forked = translate_ids(model, srcs, config, workers=2, progress=done.append)
    assert [[(h.tokens, round(h.score, 5)) for h in found] for found in forked] == \
        [[(h.tokens, round(h.score, 5)) for h in found] for found in alone]
    assert sum(done) == len(srcs) and len(done) > 2  # several batches, each reported


def test_chunked_top_k_equals_topk() -> None:
    """The chunked top-k finds the same values as torch.topk, at their own columns."""
    torch.manual_seed(0)
    for N, V, k in ((7, 8000, 10), (5, 1001, 3), (4, 300, 10), (3, 64 * 12, 1), (2, 50, 60)):
        x = torch.randn(N, V)
        x[:, :3] = float("-inf")  # as padding and BOS are
        if V >= 200:
            x[0, 100:200] = 5.0 + torch.arange(100) * 1e-3  # the best entries crowded into neighbouring chunks
        k = min(k, V)
        values, columns = top_k(x, k)
        assert torch.equal(values.sort(-1).values, x.topk(k).values.sort(-1).values)
        assert torch.equal(x.gather(1, columns), values)
        assert all(len(set(row)) == k for row in columns.tolist())  # no column twice


def test_decoding_in_another_precision_copies_the_model() -> None:
    """A model whose weights are fp32 decodes in bf16 through a copy; the model itself is left as it was."""
    model, srcs = make_model(), sources(5, seed=2)
    config = load_config(None, ["decode.beam=2", "decode.precision=bf16"]).decode
    assert decoding_model(model, "fp32", "cpu") is model and decoding_model(model, "auto", "cpu") is model
    assert decoding_dtype("auto", "cuda") == torch.bfloat16 and decoding_dtype("fp32", "cuda") == torch.float32
    found = translate_ids(model, srcs, config)
    assert len(found) == 5 and all(isinstance(h[0].score, float) for h in found)
    assert model.tgt_embed.tokens.weight.dtype == torch.float32


@pytest.mark.skipif(not nmt.precision._packed_linear_works(), reason="needs oneDNN's packed bf16 linear")
def test_bf16_linear_layers_on_a_cpu_are_packed() -> None:
    """A bf16 copy for decoding on a CPU gets oneDNN-packed linear layers, the tied output projection
    too; their outputs follow the plain bf16 layers' at any row count (rows are padded to a bucket),
    and the fp32 model is left as it was."""
    model = make_model()
    plain = copy.deepcopy(model).to(torch.bfloat16)  # the same model, cast, unpacked
    packed = decoding_model(model, "bf16", "cpu")
    assert not any(isinstance(m, PackedLinear) for m in [*model.modules(), *plain.modules()])
    linears = [m for m in packed.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is PackedLinear for m in linears)
    assert packed.output is not None and packed.output.weight is packed.tgt_embed.tokens.weight
    assert pack_linear_layers(model) is model and model.output is None  # fp32: left as it is
    srcs = padded(sources(5, seed=3))
    with torch.inference_mode():
        for rows in (1, 5, PackedLinear.row_bucket + 3):
            src = srcs.repeat(rows, 1)[:rows]
            tgt = torch.randint(4, V, (rows, 4))
            expected = plain.decode(tgt, *plain.encode(src)).float()
            found = packed.decode(tgt, *packed.encode(src)).float()
            assert found.shape == expected.shape == (rows, 4, V)
            finite = expected.isfinite()
            assert torch.equal(finite, found.isfinite())
            assert torch.allclose(found[finite], expected[finite], rtol=0.05, atol=0.05)
    config = load_config(None, ["decode.beam=3", "decode.precision=bf16"]).decode
    assert len(translate_ids(model, sources(7, seed=4), config)) == 7


def test_a_batch_out_of_memory_is_decoded_in_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of GPU memory, a batch is split until its parts fit; the translations are the same."""
    model, srcs = make_model(), sources(9, seed=7)
    config = load_config(None, ["decode.beam=3"]).decode
    expected = [h[0].tokens for h in translate_ids(model, srcs, config)]
    decode_batch, sizes = nmt.decode._decode_batch, []

    def small_memory(model, src, *args):
        sizes.append(src.size(0))
        if src.size(0) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode_batch(model, src, *args)
    monkeypatch.setattr(nmt.decode, "_decode_batch", small_memory)
    assert [h[0].tokens for h in translate_ids(model, srcs, config)] == expected
    assert sizes[:3] == [9, 4, 2] and sum(s for s in sizes if s <= 2) == 9  # every sentence decoded once
