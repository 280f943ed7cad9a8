"""Greedy and batched beam search over `Transformer.encode` / `Transformer.decode` with a KV cache."""

from __future__ import annotations

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

from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.errors import ConfigError
from nmt.model import Cache, CacheBuffers, Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without the start token and EOS
    score: float  # log_prob / length**length_penalty, the value beams are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included


def _step_candidates(model: Transformer, last: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                     cache: Cache, at_limit: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best next tokens of each row, (N, k) log-probabilities and ids, in no particular order.

    No (N, V) log-probability tensor is made: the tokens with the best logits are the ones with the
    best log-probabilities, so only the log-normaliser needs the whole vocabulary. BOS is never
    produced (padding's logit is already -inf); rows in `at_limit` have EOS as their only candidate.
    """
    rows, vocabulary = last.size(0), model.tgt_embed.tokens.num_embeddings
    # The logits (rows x vocabulary, 10 MB for 320 rows of 8,000) go into one buffer, reused step after step.
    out = cache.buffers.take(("logits",), memory, (rows, 1, vocabulary), cache.buffers.rows * vocabulary)
    logits = model.decode(last, memory, src_mask, cache, out=out)[:, -1].float()
    bos = logits[:, BOS_ID].clone()
    logits[:, BOS_ID] = float("-inf")
    values, tokens = top_k(logits, min(k, logits.size(-1)))  # in no order: the caller ranks them
    # The log-normaliser over every token, BOS included, as torch.logsumexp computes it, but in the
    # logits' own memory, which is no longer needed: no (N, V) temporary, and the row maximum is
    # the best candidate's or BOS's logit, without another pass.
    top = torch.maximum(values.amax(-1, keepdim=True), bos[:, None])
    if at_limit is not None:
        eos = logits[at_limit, EOS_ID]
        values[at_limit], tokens[at_limit] = float("-inf"), EOS_ID
        values[at_limit, 0] = eos
    logits[:, BOS_ID] = bos
    normaliser = logits.sub_(top).exp_().sum(-1, keepdim=True).log_().add_(top)
    return values - normaliser, tokens


def top_k(x: torch.Tensor, k: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of x (N, V) and their columns, in no particular order.

    The same values as `x.topk(k)`, about 3x faster on a CPU for a vocabulary-sized V, where
    `topk` ranks every entry: rows are cut into chunks, and the k largest entries lie in the k
    chunks with the largest maxima (a chunk holding one of them has a maximum at least as large,
    which is then one of the k largest itself), so only k * chunk entries are ranked.
    """
    N, V = x.shape
    n_chunks = -(-V // chunk)
    if n_chunks <= k:
        return x.topk(k, dim=-1, sorted=False)
    if V % chunk:
        x = F.pad(x, (0, n_chunks * chunk - V), value=float("-inf"))
    chunks = x.view(N, n_chunks, chunk)
    best = chunks.amax(-1).topk(k, dim=-1, sorted=False).indices  # (N, k) chunks
    candidates = chunks.gather(1, best[..., None].expand(N, k, chunk)).view(N, k * chunk)
    values, position = candidates.topk(k, dim=-1, sorted=False)
    return values, best.gather(1, position // chunk) * chunk + position % chunk


def _at_limit(step: int, limits: torch.Tensor, shortest: int) -> Optional[torch.Tensor]:
    """Rows whose next token (number step + 1) is their last; None while no row is there (no device sync)."""
    return limits <= step + 1 if step + 1 >= shortest else None


@torch.inference_mode()  # no autograd bookkeeping at all, a little faster than no_grad
def greedy_search(model: Transformer, src: torch.Tensor, max_lens: torch.Tensor,
                  buffers: Optional[CacheBuffers] = None) -> list[list[Hypothesis]]:
    """src (B, S) padded ids ending in EOS; max_lens (B,) output limits counting EOS; `buffers`: see `Cache`."""
    memory, src_mask = model.encode(src)
    B = src.size(0)
    cache = model.new_cache(capacity=int(max_lens.max()), buffers=buffers)
    last = torch.full((B, 1), model.start_id, dtype=torch.long, device=src.device)
    generated, log_prob = [], torch.zeros(B, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    shortest = int(max_lens.min())
    for step in range(int(max_lens.max())):
        values, tokens = _step_candidates(model, last, memory, src_mask, cache, _at_limit(step, max_lens, shortest), 1)
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


@torch.inference_mode()
def beam_search(model: Transformer, src: torch.Tensor, max_lens: torch.Tensor, beam: int,
                length_penalty: float = 1.0, nbest: int = 1, buffers: Optional[CacheBuffers] = None) -> list[list[Hypothesis]]:
    """Batched beam search: `beam` hypotheses per sentence, each step one decoder call for all of them.

    A candidate ending in EOS that ranks within the top `beam` is finished; a sentence is done
    once it has `beam` finished hypotheses, and its rows leave the batch, so each step costs only
    what the sentences still searching need. Returns the `nbest` best per sentence, best first.
    `buffers` (see `Cache`) may be shared by the searches of successive batches.
    """
    B, K = src.size(0), beam
    memory, src_mask = model.encode(src)  # one row per sentence; its beam rows share it
    # The first step has one row per sentence (all K beams would be the same); it spreads to K rows.
    R, limits = 1, max_lens.clone()  # R decoder rows per sentence; limits per row
    cache = model.new_cache(capacity=int(max_lens.max()), buffers=buffers)
    tokens = torch.full((B, 1), model.start_id, dtype=torch.long, device=src.device)
    scores = torch.zeros(B, R, device=src.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    alive = torch.arange(B, device=src.device)  # input index of each sentence still searched
    n_finished = torch.zeros(B, dtype=torch.long, device=src.device)  # finished hypotheses of each of them
    shortest = int(limits.min())
    for step in range(int(max_lens.max())):
        n = alive.numel()
        # The best 2K continuations of each row hold the sentence's best 2K over all its rows.
        values, candidates = _step_candidates(model, tokens[:, -1:], memory, src_mask, cache,
                                              _at_limit(step, limits, shortest), 2 * K)
        C = values.size(1)
        top_scores, top_index = (scores.view(-1, 1) + values).view(n, R * C).topk(min(2 * K, R * C), dim=1)
        top_beam, top_token = top_index // C, candidates.view(n, R * C).gather(1, top_index)  # (n, 2K), best first
        is_eos = top_token == EOS_ID
        offsets = torch.arange(n, device=src.device)[:, None] * R
        ending = is_eos[:, :K] & torch.isfinite(top_scores[:, :K])  # (n, K) finished hypotheses
        n_finished = (n_finished + ending.sum(1)).clamp(max=K)
        searching = n_finished < K
        # The host learns all it needs of this step at once (one device sync on a GPU).
        any_ending, any_searching, all_searching = torch.stack([ending.any(), searching.any(), searching.all()]).tolist()
        if any_ending:
            _finish(finished, alive, tokens, offsets + top_beam, top_scores, ending, K, step + 1, length_penalty)
        if not any_searching:
            break
        # The best K candidates that do not end here continue (at most K of 2K can end in EOS).
        scores, keep_pos = top_scores.masked_fill(is_eos, float("-inf")).topk(K, dim=1)
        rows, next_tokens = offsets + top_beam.gather(1, keep_pos), top_token.gather(1, keep_pos)  # (n, K)
        kept = None if all_searching else searching.nonzero().view(-1)  # sentences that go on
        if kept is not None:
            rows, next_tokens, scores, alive, n_finished = (x[kept] for x in (rows, next_tokens, scores, alive, n_finished))
        rows = rows.view(-1)
        tokens = torch.cat([tokens[rows], next_tokens.view(-1, 1)], dim=1)
        # Rows move only within a sentence; the memory rows change only when sentences leave.
        cache.reorder(rows, kept)
        R, limits = K, limits[rows]
        if kept is not None:
            memory, src_mask, shortest = memory[kept], src_mask[kept], int(limits.min())
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def _finish(finished: list[list[Hypothesis]], alive: torch.Tensor, tokens: torch.Tensor, top_rows: torch.Tensor,
            top_scores: torch.Tensor, ending: torch.Tensor, K: int, length: int, length_penalty: float) -> None:
    """Record the EOS candidates ranked within the top K (`ending`, (n, K)); `top_rows` (n, 2K) are their rows in `tokens`."""
    b, j = ending.nonzero().unbind(1)  # gathered in a few tensor ops, not read one element at a time
    for index, log_prob, sequence in zip(alive[b].tolist(), top_scores[b, j].tolist(), tokens[top_rows[b, j], 1:].tolist()):
        sentence = finished[index]
        if len(sentence) < K:
            sentence.append(Hypothesis(sequence, log_prob / length ** length_penalty, log_prob))


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


@torch.inference_mode()
def translate_ids(model: Transformer, sources: Sequence[Sequence[int]], config: DecodeConfig,
                  device: torch.device | str = "cpu",
                  progress: Optional[Callable[[int], None]] = None, workers: int = 1) -> list[list[Hypothesis]]:
    """Translate token-id sequences (no specials) in length-sorted batches; results keep input order.

    `workers` > 1 (CPU only) decodes batches in that many forked processes of one thread each, which
    share the model's memory: decoding's many small operations keep threads waiting on each other,
    so on 2 cores two one-thread processes translate ~10% more sentences a second than one
    two-thread process, as CTranslate2's `inter_threads` and Marian's CPU workers do. The output is
    the same.
    """
    global _worker_job
    model.eval()
    _keep_freed_blocks()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and torch.device(device).type != "cpu":
        raise ConfigError(f"--workers {workers}: several decoding processes are for the CPU; "
                          f"on {torch.device(device).type} use 1")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"--workers {workers}: decoding processes are forked, which this platform cannot do; use 1")
    max_source = model.config.max_positions - 1  # room for EOS
    too_long = sum(len(s) > max_source for s in sources)
    if too_long:
        log.warning("%d input line(s) longer than %d tokens were truncated", too_long, max_source)
    prepared = [list(s[:max_source]) + [EOS_ID] for s in sources]
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
    batches: list[list[int]] = []  # input indices, longest sentences first
    start = 0
    while start < len(order):
        size = max(1, config.max_tokens // (len(prepared[order[start]]) * config.beam))
        batches.append(order[start:start + size])
        start += size
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
            collect(batch, _decode_batch(model, pad([prepared[i] for i in batch]).to(device), config, buffers))
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
