"""Greedy and batched beam search over `Transformer.encode` / `Transformer.decode` with a KV cache.

Written for a GPU as much as for a CPU: a search step reads one small tensor back to the host
(which sentences go on), and nothing else. Finished hypotheses stay on the device until the search
ends, and the length limit, sentences leaving the batch and the candidates' ranking are tensor
operations whose sizes the host already knows, so the device never waits for the host mid-step.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import multiprocessing
import platform
import signal
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.errors import ConfigError
from nmt.model import Cache, CacheBuffers, RowBucketedLinear, Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without the start token and EOS
    score: float  # log_prob / length**length_penalty, the value beams are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included


def _step_candidates(model: Transformer, last: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                     cache: Cache, at_limit: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best next tokens of each row, (N, k) fp32 log-probabilities and ids, in no particular order.

    No (N, V) log-probability tensor is made: the tokens with the best logits are the ones with the
    best log-probabilities, so only the log-normaliser needs the whole vocabulary. BOS is never
    produced (padding's logit is already -inf); rows where `at_limit` (N,) is True have EOS as their
    only candidate.
    """
    rows, vocabulary = last.size(0), model.tgt_embed.tokens.num_embeddings
    # The logits (rows x vocabulary, 10 MB for 320 rows of 8,000) go into one buffer, reused step after step.
    out = cache.buffers.take(("logits",), memory, (rows, 1, vocabulary), cache.buffers.rows * vocabulary)
    logits = model.decode(last, memory, src_mask, cache, out=out)[:, -1].float()  # a bf16 model's are summed in fp32
    bos = logits[:, BOS_ID].clone()
    logits[:, BOS_ID] = float("-inf")
    values, tokens = top_k(logits, min(k, logits.size(-1)))  # in no order: the caller ranks them
    # The log-normaliser over every token, BOS included, as torch.logsumexp computes it, but in the
    # logits' own memory, which is no longer needed: no (N, V) temporary, and the row maximum is
    # the best candidate's or BOS's logit, without another pass.
    top = torch.maximum(values.amax(-1, keepdim=True), bos[:, None])
    if at_limit is not None:  # a select, not boolean indexing, which would wait for the device
        eos_only = torch.full_like(values, float("-inf"))
        eos_only[:, 0] = logits[:, EOS_ID]
        values = torch.where(at_limit[:, None], eos_only, values)
        tokens = tokens.masked_fill(at_limit[:, None], EOS_ID)
    logits[:, BOS_ID] = bos
    normaliser = logits.sub_(top).exp_().sum(-1, keepdim=True).log_().add_(top)
    return values - normaliser, tokens


def top_k(x: torch.Tensor, k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of x (N, V) and their columns, in no particular order.

    On a CPU, the same values as `x.topk(k)` about 3x faster for a vocabulary-sized V, where `topk`
    ranks every entry: rows are cut into chunks, and the k largest entries lie in the k chunks with
    the largest maxima (a chunk holding one of them has a maximum at least as large, which is then
    one of the k largest itself), so only k * chunk entries are ranked. On a GPU, `topk` itself:
    its kernel does not rank every entry, and the chunks' padding and gathers would cost more.
    """
    N, V = x.shape
    n_chunks = -(-V // chunk)
    if n_chunks <= k or x.device.type != "cpu":
        return x.topk(k, dim=-1, sorted=False)
    if V % chunk:
        x = F.pad(x, (0, n_chunks * chunk - V), value=float("-inf"))
    best = x.view(N, n_chunks, chunk).amax(-1).topk(k, dim=-1, sorted=False).indices  # (N, k) chunks
    # Whole chunks copied by index_select (a gather with an expanded index is 5x slower here).
    rows = torch.arange(0, N * n_chunks, n_chunks, device=x.device)[:, None]
    candidates = x.view(N * n_chunks, chunk).index_select(0, (best + rows).view(-1)).view(N, k * chunk)
    values, position = candidates.topk(k, dim=-1, sorted=False)
    return values, best.gather(1, position // chunk) * chunk + position % chunk


@torch.inference_mode()  # no autograd bookkeeping at all, a little faster than no_grad
def greedy_search(model: Transformer, src: torch.Tensor, max_lens: torch.Tensor,
                  buffers: Optional[CacheBuffers] = None) -> list[list[Hypothesis]]:
    """src (B, S) padded ids ending in EOS; max_lens (B,) output limits counting EOS; `buffers`: see `Cache`.

    Rows that have ended stay in the batch (producing padding) until every row has: the step's one
    host read is whether all have.
    """
    limits = max_lens.tolist()  # the host's copy, read once
    memory, src_mask = model.encode(src)
    B = src.size(0)
    cache = model.new_cache(capacity=max(limits), buffers=buffers)
    last = torch.full((B, 1), model.start_id, dtype=torch.long, device=src.device)
    generated, log_prob = [], torch.zeros(B, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    for step in range(max(limits)):
        at_limit = max_lens <= step + 1 if step + 1 >= min(limits) else None
        values, tokens = _step_candidates(model, last, memory, src_mask, cache, at_limit, 1)
        best, token = values[:, 0], tokens[:, 0]
        log_prob += torch.where(finished, torch.zeros_like(best), best)
        token = token.masked_fill(finished, PAD_ID)
        generated.append(token)
        finished |= token == EOS_ID
        last = token[:, None]
        if finished.all():
            break
    rows = torch.stack(generated, dim=1).tolist()
    return [[Hypothesis(_strip(row), lp, lp)] for row, lp in zip(rows, log_prob.tolist())]


def _strip(row: Sequence[int]) -> list[int]:
    out = []
    for token in row:
        if token in (EOS_ID, PAD_ID):
            break
        out.append(token)
    return out


class _Finished:
    """A beam search's finished hypotheses, kept on its device: K slots per sentence, filled in order.

    A step records the hypotheses it finishes with a few tensor operations, however many there are,
    and the host reads the store once, when the search ends, instead of once per hypothesis (each
    read a wait for the device on a GPU). Slot K of each sentence takes what does not count: the
    candidates that do not end, and those beyond the first K finished (a sentence keeps its first K).
    """

    def __init__(self, B: int, K: int, steps: int, device: torch.device) -> None:
        self.K = K
        self.tokens = torch.zeros(B * (K + 1), max(steps - 1, 1), dtype=torch.long, device=device)
        self.log_prob = torch.zeros(B * (K + 1), device=device)
        self.length = torch.zeros(B * (K + 1), dtype=torch.long, device=device)  # EOS included; 0: an empty slot

    def add(self, alive: torch.Tensor, count: torch.Tensor, ending: torch.Tensor, sequences: torch.Tensor,
            log_prob: torch.Tensor, length: int) -> None:
        """Record the candidates where `ending` (n, K) is True, of the sentences `alive` (n,) (input
        indices), which had `count` (n,) finished hypotheses before; `sequences` (n * K, length - 1)
        are the candidates' tokens before EOS, `log_prob` (n, K) their scores."""
        slot = count[:, None] + ending.cumsum(1) - 1
        slot = torch.where(ending & (slot < self.K), slot, self.K)
        where = (alive[:, None] * (self.K + 1) + slot).view(-1)  # junk goes to slot K, several times over
        self.tokens[:, :length - 1].index_copy_(0, where, sequences)
        self.log_prob.index_copy_(0, where, log_prob.reshape(-1))
        self.length.index_fill_(0, where, length)

    def collect(self, length_penalty: float, nbest: int) -> list[list[Hypothesis]]:
        """The `nbest` best hypotheses of each sentence, best first (ties: the earlier finished first)."""
        K = self.K
        lengths = self.length.view(-1, K + 1)[:, :K].tolist()
        longest = max((length for row in lengths for length in row), default=1)
        tokens = self.tokens.view(-1, K + 1, self.tokens.size(1))[:, :K, :max(longest - 1, 0)].tolist()
        found = []
        for row_lengths, row_log_probs, row_tokens in zip(lengths, self.log_prob.view(-1, K + 1)[:, :K].tolist(), tokens):
            hyps = [Hypothesis(sequence[:length - 1], log_prob / length ** length_penalty, log_prob)
                    for length, log_prob, sequence in zip(row_lengths, row_log_probs, row_tokens) if length]
            found.append(sorted(hyps, key=lambda h: -h.score)[:nbest])
        return found


@torch.inference_mode()
def beam_search(model: Transformer, src: torch.Tensor, max_lens: torch.Tensor, beam: int,
                length_penalty: float = 1.0, nbest: int = 1, buffers: Optional[CacheBuffers] = None) -> list[list[Hypothesis]]:
    """Batched beam search: `beam` hypotheses per sentence, each step one decoder call for all of them.

    A candidate ending in EOS that ranks within the top `beam` is finished; a sentence is done
    once it has `beam` finished hypotheses, and its rows leave the batch, so each step costs only
    what the sentences still searching need. Returns the `nbest` best per sentence, best first.
    `buffers` (see `Cache`) may be shared by the searches of successive batches.
    """
    B, K, device = src.size(0), beam, src.device
    limit_of = max_lens.tolist()  # the host's copy, read once: output limits by input index
    memory, src_mask = model.encode(src)  # one row per sentence; its beam rows share it
    # The first step has one row per sentence (all K beams would be the same); it spreads to K rows.
    R, limits = 1, max_lens  # R decoder rows per sentence; limits (n,) of the sentences searched
    cache = model.new_cache(capacity=max(limit_of), buffers=buffers)
    tokens = torch.full((B, 1), model.start_id, dtype=torch.long, device=device)  # (n * R, step + 1)
    scores = torch.zeros(B, R, device=device)  # fp32 sums of log-probabilities, whatever the model's dtype
    store = _Finished(B, K, max(limit_of), device)
    alive, alive_ids = torch.arange(B, device=device), list(range(B))  # input index of each sentence searched
    count = torch.zeros(B, dtype=torch.long, device=device)  # finished hypotheses of each of them
    for step in range(max(limit_of)):
        n = len(alive_ids)
        at_limit = None  # rows whose next token is their last: none until the shortest limit comes
        if step + 1 >= min(limit_of[i] for i in alive_ids):
            at_limit = (limits <= step + 1)[:, None].expand(n, R).reshape(-1)
        # The best 2K continuations of each row hold the sentence's best 2K over all its rows.
        values, candidates = _step_candidates(model, tokens[:, -1:], memory, src_mask, cache, at_limit, 2 * K)
        C = values.size(1)
        top_scores, top_index = (scores.view(-1, 1) + values).view(n, R * C).topk(min(2 * K, R * C), dim=1)
        top_rows = top_index // C + torch.arange(n, device=device)[:, None] * R  # (n, 2K) rows of `tokens`, best first
        top_token = candidates.view(n, R * C).gather(1, top_index)
        is_eos = top_token == EOS_ID
        ending = is_eos[:, :K] & torch.isfinite(top_scores[:, :K])  # (n, K) finished hypotheses
        new_count = (count + ending.sum(1)).clamp(max=K)
        searching = new_count < K
        # The step's one host read: which sentences go on, and whether any hypothesis ended.
        *going_on, any_ending = torch.cat([searching, ending.any().view(1)]).tolist()
        if any_ending:
            ended = tokens.index_select(0, top_rows[:, :K].reshape(-1))[:, 1:]
            store.add(alive, count, ending, ended, top_scores[:, :K], step + 1)
        count, n_going = new_count, sum(going_on)
        if n_going == 0:
            break
        # The best K candidates that do not end here continue (at most K of 2K can end in EOS).
        scores, keep_pos = top_scores.masked_fill(is_eos, float("-inf")).topk(K, dim=1)
        rows, next_tokens = top_rows.gather(1, keep_pos), top_token.gather(1, keep_pos)  # (n, K)
        kept = None
        if n_going < n:  # the sentences that go on, in order, found without asking the device where they are
            kept = torch.argsort((~searching).to(torch.uint8), stable=True)[:n_going]
            rows, next_tokens, scores, alive, count, limits, memory, src_mask = (
                x.index_select(0, kept) for x in (rows, next_tokens, scores, alive, count, limits, memory, src_mask))
            alive_ids = [index for index, going in zip(alive_ids, going_on) if going]
        rows = rows.view(-1)
        tokens = torch.cat([tokens.index_select(0, rows), next_tokens.view(-1, 1)], dim=1)
        # Rows move only within a sentence; the memory rows change only when sentences leave.
        cache.reorder(rows, kept)
        R = K
    return store.collect(length_penalty, nbest)


def output_limits(src_lengths: torch.Tensor, config: DecodeConfig, max_positions: int) -> torch.Tensor:
    """Per-sentence output length limit (EOS included): a * source length + b, within the position table."""
    limits = (src_lengths.float() * config.max_len_a).long() + config.max_len_b
    return limits.clamp(min=1, max=max_positions)


@functools.cache  # once per process
def _keep_freed_blocks() -> None:
    """Have glibc's malloc serve blocks of up to 32 MB from its heap and keep up to 64 MB of freed heap.

    A decoding step makes and frees tensors of several MB (an int8 output projection's logits, 10 MB
    for 320 rows of 8,000; activations), and glibc's defaults give them back to the kernel as soon as
    they are freed, so the next step takes fresh pages and a page fault on every 4 KB of them: int8
    decoding spent 10% of its time in the kernel. glibc raises these thresholds by itself after the
    program frees a large block, which happens in a long run sooner or later; this sets them at once.
    Once per process, on glibc only; the settings are the process's from then on.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)


def _decode_batch(model: Transformer, src: torch.Tensor, config: DecodeConfig, buffers: CacheBuffers) -> list[list[Hypothesis]]:
    limits = output_limits((src != PAD_ID).sum(1) - 1, config, model.config.max_positions)
    if config.beam == 1:
        return greedy_search(model, src, limits, buffers)
    return beam_search(model, src, limits, config.beam, config.length_penalty, config.nbest, buffers)


def _decode_in_memory(model: Transformer, batch: list[list[int]], config: DecodeConfig, device: torch.device | str,
                      buffers: CacheBuffers) -> list[list[Hypothesis]]:
    """Decode one batch; a batch that runs out of GPU memory is decoded in halves instead (same output)."""
    try:
        return _decode_batch(model, pad(batch).to(device), config, buffers)
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
    # Outside the except block, so that the failed attempt's tensors are freed before the retry.
    log.warning("decoding %d sentences at once ran out of GPU memory; decoding them in halves "
                "(a smaller decode.max_tokens avoids the retry)", len(batch))
    buffers.tensors.clear()
    buffers.rows = buffers.row_positions = 0  # from now on sized for the batches that fit
    torch.cuda.empty_cache()
    half = len(batch) // 2
    return (_decode_in_memory(model, batch[:half], config, device, buffers)
            + _decode_in_memory(model, batch[half:], config, device, buffers))


# What a forked decoding worker reads: the model, the batches of ids, the settings and the (still
# empty) cache buffers, which each worker fills once and keeps from one of its batches to the next;
# inherited from the parent at fork, so nothing is pickled but batch numbers going out and
# hypotheses coming back.
_worker_job: Optional[tuple[Transformer, list[list[list[int]]], DecodeConfig, CacheBuffers]] = None


def _worker_start() -> None:
    # One thread: a child forked from a parent that has run OpenMP threads hangs in its first
    # parallel region (GNU libgomp), so workers never start one.
    torch.set_num_threads(1)
    # Ctrl-C is the parent's to handle: it stops the pool, instead of every worker printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_decode(number: int) -> tuple[int, list[list[Hypothesis]]]:
    assert _worker_job is not None
    model, batches, config, buffers = _worker_job
    return number, _decode_batch(model, pad(batches[number]), config, buffers)  # the searches run in inference mode


# decode.max_tokens when it is 0. On a GPU a step costs about the same for ten times the rows (its
# time goes into launching the step's kernels), so fewer, larger batches decode faster; on a CPU,
# 3,000 to 12,000 decode at the same speed.
BATCH_TOKENS = {"cpu": 6_000, "cuda": 60_000}


def batch_budget(max_tokens: int, device: torch.device | str) -> int:
    """The source-token budget of one decoding batch (times the beam): decode.max_tokens, or for 0 the device's."""
    return max_tokens or BATCH_TOKENS.get(torch.device(device).type, 6_000)


def decoding_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """What decode.precision (auto, fp32 or bf16) means on `device`: bf16 is auto's choice on CUDA."""
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return torch.float32


def decoding_model(model: Transformer, precision: str, device: torch.device | str) -> Transformer:
    """The model itself when its weights are in decode.precision's dtype on `device`, else a copy in it
    (training's fp32 weights decoded in bf16 for validation: one copy of the weights costs less than
    autocast's casts at every step; a bf16 copy on a CPU gets `pack_linear_layers`)."""
    dtype = decoding_dtype(precision, device)
    if model.tgt_embed.tokens.weight.dtype == dtype:
        return model
    return pack_linear_layers(copy.deepcopy(model).to(dtype))


class PackedLinear(RowBucketedLinear):
    """A bf16 linear layer for decoding on a CPU: its weight laid out once in oneDNN's blocked format,
    the bias added inside the multiply, the row count rounded up to a multiple of `row_bucket`.

    torch's bf16 `linear` on a CPU lays the weight out anew at every call and adds the bias in a
    pass of its own, and oneDNN builds a kernel for every new row count (a beam step's rows change
    as sentences finish). Inference only: `packed` is a copy, which a change to `weight` would not reach.
    """

    row_bucket = 64
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


def pack_linear_layers(model: Transformer) -> Transformer:
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


def _make_batches(prepared: list[list[int]], budget: int, beam: int) -> list[list[int]]:
    """Input indices in batches of about `budget` source tokens x beam, longest sentences first."""
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
    batches, start = [], 0
    while start < len(order):
        size = max(1, budget // (len(prepared[order[start]]) * beam))
        batches.append(order[start:start + size])
        start += size
    return batches


@torch.inference_mode()
def translate_ids(model: Transformer, sources: Sequence[Sequence[int]], config: DecodeConfig,
                  device: torch.device | str = "cpu",
                  progress: Optional[Callable[[int], None]] = None, workers: int = 1) -> list[list[Hypothesis]]:
    """Translate token-id sequences (no specials) in length-sorted batches; results keep input order.

    The model decodes in decode.precision's dtype (a copy of it, if its weights are in another one).
    `workers` > 1 (CPU only) decodes batches in that many forked processes of one thread each, which
    share the model's memory: decoding's many small operations keep threads waiting on each other,
    so on 2 cores two one-thread processes translate ~10% more sentences a second than one
    two-thread process, as CTranslate2's `inter_threads` and Marian's CPU workers do. The output is
    the same.
    """
    global _worker_job
    _keep_freed_blocks()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and torch.device(device).type != "cpu":
        raise ConfigError(f"--workers {workers}: several decoding processes are for the CPU; "
                          f"on {torch.device(device).type} use 1")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"--workers {workers}: decoding processes are forked, which this platform cannot do; use 1")
    model = decoding_model(model, config.precision, device).eval()
    max_source = model.config.max_positions - 1  # room for EOS
    too_long = sum(len(s) > max_source for s in sources)
    if too_long:
        log.warning("%d input line(s) longer than %d tokens were truncated", too_long, max_source)
    prepared = [list(s[:max_source]) + [EOS_ID] for s in sources]
    batches = _make_batches(prepared, batch_budget(config.max_tokens, device), config.beam)
    results: list[Optional[list[Hypothesis]]] = [None] * len(prepared)

    def collect(batch: list[int], hyps: list[list[Hypothesis]]) -> None:
        for index, h in zip(batch, hyps):
            results[index] = h
        if progress is not None:
            progress(len(batch))

    # The batches' caches share their buffers, sized once for the largest (freed when this returns).
    limits = [int(output_limits(torch.tensor([len(prepared[batch[0]]) - 1]), config, model.config.max_positions))
              for batch in batches]
    buffers = CacheBuffers(rows=max((len(batch) for batch in batches), default=0) * config.beam,
                           row_positions=max((len(batch) * config.beam * limit for batch, limit in zip(batches, limits)),
                                             default=0))
    workers = min(workers, len(batches))
    if workers <= 1:
        for batch in batches:
            collect(batch, _decode_in_memory(model, [prepared[i] for i in batch], config, device, buffers))
        return results  # type: ignore[return-value]
    _worker_job = (model, [[prepared[i] for i in batch] for batch in batches], config, buffers)
    try:
        # The longest batches go first, so no worker is left with a long one at the end.
        with multiprocessing.get_context("fork").Pool(workers, _worker_start) as pool:
            for number, hyps in pool.imap_unordered(_worker_decode, range(len(batches))):
                collect(batches[number], hyps)
    finally:
        _worker_job = None
    return results  # type: ignore[return-value]
