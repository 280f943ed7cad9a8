"""Greedy and batched beam search over `Transformer.encode` / `Transformer.decode` with a KV cache.

Written for a GPU as much as for a CPU: a search step reads one small tensor back to the host
(which sentences go on), and nothing else. Finished hypotheses stay on the device until the search
ends, and the length limit, sentences leaving the batch and the candidates' ranking are tensor
operations whose sizes the host already knows, so the device never waits for the host mid-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from nmt.model import Cache, CacheBuffers, Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


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
    produced, nor padding (whose logit is -inf, except in models that keep it in the softmax:
    `pad_in_softmax`); rows where `at_limit` (N,) is True have EOS as their only candidate.
    """
    rows, vocabulary = last.size(0), model.tgt_embed.tokens.num_embeddings
    # The logits (rows x vocabulary, 10 MB for 320 rows of 8,000) go into one buffer, reused step after step.
    out = cache.buffers.take(("logits",), memory, (rows, 1, vocabulary), cache.buffers.rows * vocabulary)
    logits = model.decode(last, memory, src_mask, cache, out=out)[:, -1].float()  # a bf16 model's are summed in fp32
    never = [BOS_ID, PAD_ID] if model.config.pad_in_softmax else BOS_ID  # tokens counted, never produced
    bos = logits[:, never].clone()
    logits[:, never] = float("-inf")
    values, tokens = top_k(logits, min(k, logits.size(-1)))  # in no order: the caller ranks them
    # The log-normaliser over every token, BOS included, as torch.logsumexp computes it, but in the
    # logits' own memory, which is no longer needed: no (N, V) temporary, and the row maximum is
    # the best candidate's or BOS's logit, without another pass.
    top = torch.maximum(values.amax(-1, keepdim=True), bos.view(bos.size(0), -1).amax(-1, keepdim=True))
    if at_limit is not None:  # a select, not boolean indexing, which would wait for the device
        eos_only = torch.full_like(values, float("-inf"))
        eos_only[:, 0] = logits[:, EOS_ID]
        values = torch.where(at_limit[:, None], eos_only, values)
        tokens = tokens.masked_fill(at_limit[:, None], EOS_ID)
    logits[:, never] = bos
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


def _begin(model: Transformer, memory: torch.Tensor, src_mask: torch.Tensor, cache: Cache,
           prefix: Optional[torch.Tensor]) -> torch.Tensor:
    """The decoder's first inputs, (B, 1 + P): the start token, then `prefix` (B, P), the tokens every
    output begins with (a target-language tag: forced, as `forced_bos_token_id` forces it, with
    log-probability 0). All but the last go through the decoder into the cache at once."""
    B = memory.size(0)
    start = torch.full((B, 1), model.start_id, dtype=torch.long, device=memory.device)
    if prefix is None or prefix.size(1) == 0:
        return start
    history = torch.cat([start, prefix.to(memory.device)], dim=1)
    model.decode(history[:, :-1], memory, src_mask, cache, project=False)
    return history


@torch.inference_mode()  # no autograd bookkeeping at all, a little faster than no_grad
def greedy_search(model: Transformer, src: torch.Tensor, max_lens: torch.Tensor,
                  buffers: Optional[CacheBuffers] = None, prefix: Optional[torch.Tensor] = None) -> list[list[Hypothesis]]:
    """src (B, S) padded ids ending in EOS; max_lens (B,) output limits counting EOS (and the prefix);
    `buffers`: see `Cache`; `prefix` (B, P): tokens every output starts with (see `_begin`).

    Rows that have ended stay in the batch (producing padding) until every row has: the step's one
    host read is whether all have.
    """
    limits = max_lens.tolist()  # the host's copy, read once
    memory, src_mask = model.encode(src)
    B = src.size(0)
    cache = model.new_cache(capacity=max(limits), buffers=buffers)
    history = _begin(model, memory, src_mask, cache, prefix)
    last = history[:, -1:]
    generated, log_prob = list(history[:, 1:].unbind(1)), torch.zeros(B, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    for step in range(len(generated), max(limits)):
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
                length_penalty: float = 1.0, nbest: int = 1, buffers: Optional[CacheBuffers] = None,
                prefix: Optional[torch.Tensor] = None) -> list[list[Hypothesis]]:
    """Batched beam search: `beam` hypotheses per sentence, each step one decoder call for all of them.

    A candidate ending in EOS that ranks within the top `beam` is finished; a sentence is done
    once it has `beam` finished hypotheses, and its rows leave the batch, so each step costs only
    what the sentences still searching need. Returns the `nbest` best per sentence, best first.
    `buffers` (see `Cache`) may be shared by the searches of successive batches; `prefix` (B, P)
    is what every hypothesis starts with (see `_begin`), counted in its length.
    """
    B, K, device = src.size(0), beam, src.device
    limit_of = max_lens.tolist()  # the host's copy, read once: output limits by input index
    memory, src_mask = model.encode(src)  # one row per sentence; its beam rows share it
    # The first step has one row per sentence (all K beams would be the same); it spreads to K rows.
    R, limits = 1, max_lens  # R decoder rows per sentence; limits (n,) of the sentences searched
    cache = model.new_cache(capacity=max(limit_of), buffers=buffers)
    tokens = _begin(model, memory, src_mask, cache, prefix)  # (n * R, step + 1)
    scores = torch.zeros(B, R, device=device)  # fp32 sums of log-probabilities, whatever the model's dtype
    store = _Finished(B, K, max(limit_of), device)
    alive, alive_ids = torch.arange(B, device=device), list(range(B))  # input index of each sentence searched
    count = torch.zeros(B, dtype=torch.long, device=device)  # finished hypotheses of each of them
    for step in range(tokens.size(1) - 1, max(limit_of)):
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
