"""Translating token ids: sentences in token-budget batches (longest first), each batch searched
(`nmt.search`), in one process or in several forked CPU workers; out-of-memory batches split in two.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import platform
import signal
from typing import Callable, Optional, Sequence

import torch

from nmt.config import DecodeConfig
from nmt.data import pad, rows_within
from nmt.errors import ConfigError
from nmt.model import CacheBuffers, Transformer
from nmt.precision import decoding_model
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.tokenizer import EOS_ID, PAD_ID

log = logging.getLogger(__name__)


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


def _decode_batch(model: Transformer, src: torch.Tensor, config: DecodeConfig, buffers: CacheBuffers,
                  prefix: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """Search one padded batch; every output starts with `prefix`, which its length limit does not count."""
    limits = output_limits((src != PAD_ID).sum(1) - 1, config, model.config.max_positions - len(prefix)) + len(prefix)
    forced = torch.tensor([list(prefix)], dtype=torch.long).expand(src.size(0), -1) if prefix else None
    if config.beam == 1:
        return greedy_search(model, src, limits, buffers, forced)
    return beam_search(model, src, limits, config.beam, config.length_penalty, config.nbest, buffers, forced)


def _decode_in_memory(model: Transformer, batch: list[list[int]], config: DecodeConfig, device: torch.device | str,
                      buffers: CacheBuffers, prefix: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """Decode one batch; a batch that runs out of GPU memory is decoded in halves instead (same output)."""
    try:
        return _decode_batch(model, pad(batch).to(device), config, buffers, prefix)
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
    return (_decode_in_memory(model, batch[:half], config, device, buffers, prefix)
            + _decode_in_memory(model, batch[half:], config, device, buffers, prefix))


# What a forked decoding worker reads: the model, the batches of ids, the settings and the (still
# empty) cache buffers, which each worker fills once and keeps from one of its batches to the next;
# inherited from the parent at fork, so nothing is pickled but batch numbers going out and
# hypotheses coming back.
_worker_job: Optional[tuple[Transformer, list[list[list[int]]], DecodeConfig, CacheBuffers, Sequence[int]]] = None


def _worker_start() -> None:
    # One thread: a child forked from a parent that has run OpenMP threads hangs in its first
    # parallel region (GNU libgomp), so workers never start one.
    torch.set_num_threads(1)
    # Ctrl-C is the parent's to handle: it stops the pool, instead of every worker printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_decode(number: int) -> tuple[int, list[list[Hypothesis]]]:
    assert _worker_job is not None
    model, batches, config, buffers, prefix = _worker_job
    return number, _decode_batch(model, pad(batches[number]), config, buffers, prefix)  # the searches run in inference mode


# decode.max_tokens when it is 0. On a GPU a step costs about the same for ten times the rows (its
# time goes into launching the step's kernels), so fewer, larger batches decode faster; on a CPU,
# 3,000 to 12,000 decode at the same speed.
BATCH_TOKENS = {"cpu": 6_000, "cuda": 60_000}


def batch_budget(max_tokens: int, device: torch.device | str) -> int:
    """The source-token budget of one decoding batch (times the beam): decode.max_tokens, or for 0 the device's."""
    return max_tokens or BATCH_TOKENS.get(torch.device(device).type, 6_000)


def _make_batches(prepared: list[list[int]], budget: int, beam: int) -> list[list[int]]:
    """Input indices in batches of about `budget` source tokens x beam, longest sentences first."""
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
    batches, start = [], 0
    while start < len(order):
        size = rows_within(budget, len(prepared[order[start]]) * beam)  # sentences of `beam` rows each
        batches.append(order[start:start + size])
        start += size
    return batches


@torch.inference_mode()
def translate_ids(model: Transformer, sources: Sequence[Sequence[int]], config: DecodeConfig,
                  device: torch.device | str = "cpu",
                  progress: Optional[Callable[[int], None]] = None, workers: int = 1,
                  prefix: Sequence[int] = ()) -> list[list[Hypothesis]]:
    """Translate token-id sequences (no EOS) in length-sorted batches; results keep input order.

    Every output starts with `prefix` (a forced target-language tag), beyond the length limit.

    The model decodes in decode.precision's dtype (a copy of it, if its weights are in another one).
    `workers` > 1 (CPU only) decodes batches in that many forked processes of one thread each, which
    share the model's memory: decoding's many small operations keep threads waiting on each other,
    so on 2 cores two one-thread processes translate more sentences a second than one two-thread
    process (the README gives the measured range), as CTranslate2's `inter_threads` and Marian's CPU
    workers do. The output is the same.
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
    limits = [int(output_limits(torch.tensor([len(prepared[batch[0]]) - 1]), config,
                                model.config.max_positions - len(prefix))) + len(prefix) for batch in batches]
    buffers = CacheBuffers(rows=max((len(batch) for batch in batches), default=0) * config.beam,
                           row_positions=max((len(batch) * config.beam * limit for batch, limit in zip(batches, limits)),
                                             default=0))
    workers = min(workers, len(batches))
    if workers <= 1:
        for batch in batches:
            collect(batch, _decode_in_memory(model, [prepared[i] for i in batch], config, device, buffers, prefix))
        return results  # type: ignore[return-value]
    _worker_job = (model, [[prepared[i] for i in batch] for batch in batches], config, buffers, prefix)
    try:
        # The longest batches go first, so no worker is left with a long one at the end.
        with multiprocessing.get_context("fork").Pool(workers, _worker_start) as pool:
            for number, hyps in pool.imap_unordered(_worker_decode, range(len(batches))):
                collect(batches[number], hyps)
    finally:
        _worker_job = None
    return results  # type: ignore[return-value]
