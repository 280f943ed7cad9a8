"""Host reads during search: at most one per step, also when hypotheses finish, sentences leave and
the length limit comes.

A GPU runs ahead of the host until the host reads a result; every such read makes it wait. On a
CPU the reads are counted where they would happen: the operators whose result the host must see
(`aten._local_scalar_dense`, `aten.nonzero`, boolean-mask indexing, ...) and the Python methods that
read a tensor (`.tolist()`, `.item()`, `bool()`), which never reach the dispatcher on a CPU tensor.
On CUDA, `torch.cuda.set_sync_debug_mode` counts the waits themselves.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from nmt.search import beam_search, greedy_search
from nmt.model import Transformer

from test_decode import make_model, padded, sources

aten = torch.ops.aten
# Operators whose output the host needs before it can go on (their size or value depends on the data).
READING_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero, aten.equal,
               aten._unique2, aten.unique_consecutive, aten.unique_dim, aten.masked_scatter}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
READING_METHODS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
                   torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy}
STEP = "step"


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class _Reads(TorchDispatchMode):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log, self.inside_method = log, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if not self.inside_method and (packet in READING_OPS or (packet in INDEXING_OPS and _has_bool_index(args))):
            self.log.append(str(func))
        return func(*args, **(kwargs or {}))


class _ReadingMethods(TorchFunctionMode):
    def __init__(self, reads: _Reads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in READING_METHODS or self.reads.inside_method:
            return func(*args, **(kwargs or {}))
        self.reads.log.append(func.__name__)  # one read, whatever operators it runs underneath
        self.reads.inside_method = True
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.reads.inside_method = False


@contextmanager
def _steps(model: Transformer, log: list, rows: list[int]) -> Iterator[None]:
    """Mark each decoder call (one per search step) in `log`, and note its rows."""
    decode = model.decode

    def marked(tgt_in, *args, **kwargs):
        log.append(STEP)
        rows.append(tgt_in.size(0))
        return decode(tgt_in, *args, **kwargs)
    model.decode = marked
    try:
        yield
    finally:
        del model.decode


def _search_case(model: Transformer) -> tuple[torch.Tensor, torch.Tensor]:
    srcs = sources(7, seed=4)
    # Limits far apart: some sentences finish early and leave, others run into their limit.
    return padded(srcs), torch.tensor([3, 9, 6, 12, 4, 9, 7])


def _reads_per_step(model: Transformer, search: Callable, src: torch.Tensor, limits: torch.Tensor):
    log: list = []
    rows: list[int] = []
    reads = _Reads(log)
    with _steps(model, log, rows), reads, _ReadingMethods(reads):
        found = search(model, src, limits)
    marks = [i for i, entry in enumerate(log) if entry == STEP]
    between = [marks[i + 1] - marks[i] - 1 for i in range(len(marks) - 1)]
    return found, marks[0], between, len(log) - marks[-1] - 1, rows


@torch.no_grad()
def test_beam_search_reads_once_per_step() -> None:
    model = make_model(3)
    src, limits = _search_case(model)
    found, before, between, after, rows = _reads_per_step(
        model, lambda m, s, l: beam_search(m, s, l, beam=4, nbest=4), src, limits)
    # The case covers what used to cost extra reads: sentences leave the batch (fewer rows), finished
    # hypotheses of different lengths, some ended by the length limit.
    assert rows[0] == 7 and rows[1] == 7 * 4 and min(rows) < rows[1]
    lengths = {len(h.tokens) + 1 for hyps in found for h in hyps}
    assert len(lengths) >= 3
    assert any(len(h.tokens) + 1 == limit for hyps, limit in zip(found, limits.tolist()) for h in hyps)
    assert before <= 1  # the limits, read once
    assert between and max(between) <= 1  # each step: which sentences go on
    assert after <= 1 + 3  # the last step's read, then the finished hypotheses, read together


@torch.no_grad()
def test_greedy_search_reads_once_per_step() -> None:
    model = make_model(3)
    src, limits = _search_case(model)
    found, before, between, after, rows = _reads_per_step(model, greedy_search, src, limits)
    assert len(rows) == max(len(h[0].tokens) + 1 for h in found)  # ran until the last row ended
    assert any(len(h[0].tokens) + 1 == limit for h, limit in zip(found, limits.tolist()))
    assert before <= 1 and max(between) <= 1 and after <= 1 + 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_searches_on_cuda_wait_once_per_step(dtype: torch.dtype) -> None:
    """The same budget, counted by CUDA itself: each synchronising call is a warning in sync debug mode."""
    model = make_model(3).cuda().to(dtype)
    src, limits = (t.cuda() for t in _search_case(model))
    for search in (lambda m, s, l: beam_search(m, s, l, beam=4, nbest=4), greedy_search):
        marks: list[int] = []
        decode = model.decode

        def marked(*args, **kwargs):
            marks.append(len(caught))
            return decode(*args, **kwargs)
        model.decode = marked
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                found = search(model, src, limits)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                del model.decode
        between = [b - a for a, b in zip(marks, marks[1:])]
        assert len(found) == src.size(0) and all(found)
        assert max(between) <= 1, [str(w.message) for w in caught]
        assert marks[0] <= 2 and len(caught) - marks[-1] <= 4
