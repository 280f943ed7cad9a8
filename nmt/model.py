"""The encoder-decoder transformer (Vaswani et al., 2017) with incremental decoding.

Conventions, chosen so a post-norm model maps one-to-one onto Hugging Face MarianMT:
- Masks are boolean and True means "may attend" (the SDPA convention); `src_mask` is (B, 1, 1, S).
  The layers get it in SDPA's additive form (`attention_bias`), converted once per pass.
- Token embeddings are scaled by sqrt(d_model); sinusoidal positions start at 0 and put the
  sines in the first half of the vector, the cosines in the second.
- Every linear layer has a bias except the output projection (`output_bias` gives it one, as
  MarianMT's `final_logits_bias`); LayerNorm eps is 1e-5.
- The decoder starts from the padding token, whose embedding is the zero vector (Marian's and
  CTranslate2's convention; `decoder_start: bos` or `eos` starts from those instead). Padding is
  never an output: its logit is -inf, so its tied embedding row gets no gradient and stays zero;
  models trained elsewhere (`pad_in_softmax`) keep its logit in the softmax, and the search never
  picks it.
- Pre-norm models end each stack with a final LayerNorm; post-norm models have none.
All attention runs through `torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmt import precision
from nmt.config import ModelConfig


class CacheBuffers:
    """Flat tensors that the caches of successive batches share (see `Cache`), and a beam search's
    logits buffer, kept by key.

    `rows` and `row_positions`, when known, are the most decoder rows of a batch to come and its
    largest rows x output limit, so that each buffer is allocated once, at the size it will need.
    """

    def __init__(self, rows: int = 0, row_positions: int = 0) -> None:
        self.rows, self.row_positions = rows, row_positions
        self.tensors: dict[tuple, torch.Tensor] = {}

    def take(self, key: tuple, like: torch.Tensor, shape: tuple[int, ...], least: int = 0) -> torch.Tensor:
        """An uninitialised `shape` tensor in buffer `key`, which is (re)allocated, for at least
        `least` elements, if it does not hold that many yet."""
        numel = math.prod(shape)
        flat = self.tensors.get(key)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self.tensors[key] = like.new_empty(max(numel, least))
        return flat[:numel].view(shape)


class Cache:
    """Incremental decoding state of the decoder layers.

    Self-attention keys/values go into buffers allocated for `capacity` positions (grown by doubling
    if a longer output comes), so a step writes one position instead of concatenating the history.
    Cross-attention keys/values are computed once, one row per sentence; the decoder may run several
    rows per sentence (the beam: decoder rows a multiple G of memory rows, each sentence's G rows
    together), whose queries then attend to their sentence's memory together.

    The self-attention buffers come from `buffers`, flat tensors that a caller may share between the
    caches of successive batches: each key and value has two, used in turn (a beam step copies the
    rows it keeps from one into the other), so decoding allocates them once, not once per step or
    batch. Fresh buffers of tens of MB come as fresh pages from the kernel, whose page faults took
    7% of the CPU decoding time.
    """

    def __init__(self, n_layers: int, capacity: int = 64, buffers: Optional[CacheBuffers] = None) -> None:
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
        self.length, self.capacity = 0, capacity
        self.buffers = CacheBuffers() if buffers is None else buffers
        self.slots = [0] * n_layers  # which of its two buffers each layer's keys/values are in

    def _take(self, index: int, name: str, slot: int, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Layer `index`'s keys or values (`name`), (N, positions, H, D/H), in its buffer number `slot`."""
        return self.buffers.take((index, name, slot), like, shape, self.buffers.row_positions * shape[2] * shape[3])

    def append(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `index`'s new keys/values (N, H, T, D/H) after the filled positions; return all of them.

        The buffers are laid out (N, positions, H, D/H), so a row's filled positions are one block of
        memory, which `reorder` copies whole (27% faster than head by head), and the attention reads
        them through a transposed view.
        """
        layer, end = self.layers[index], self.length + k.size(2)
        if "k" not in layer or end > layer["k"].size(1):
            self.capacity = max(self.capacity, end, 2 * layer["k"].size(1) if "k" in layer else 0)
            slot = 1 - self.slots[index] if "k" in layer else self.slots[index]
            for name, new in (("k", k), ("v", v)):
                grown = self._take(index, name, slot, new, (new.size(0), self.capacity, new.size(1), new.size(3)))
                if name in layer:
                    grown[:, : self.length] = layer[name][:, : self.length]
                layer[name] = grown
            self.slots[index] = slot
        layer["k"][:, self.length:end], layer["v"][:, self.length:end] = k.transpose(1, 2), v.transpose(1, 2)
        return layer["k"][:, :end].transpose(1, 2), layer["v"][:, :end].transpose(1, 2)

    def reorder(self, rows: torch.Tensor, sentences: Optional[torch.Tensor] = None) -> None:
        """Keep decoder rows `rows`, in that order; with `sentences`, keep only those memory rows too."""
        n = rows.numel()
        for index, layer in enumerate(self.layers):
            slot = 1 - self.slots[index]
            for name in ("k", "v"):
                if name in layer:
                    old = layer[name]
                    layer[name] = new = self._take(index, name, slot, old, (n, *old.shape[1:]))
                    # Only the filled positions are copied, straight into the other buffer: seen as
                    # (rows, positions * H * D/H) matrices, which index_select copies row by row
                    # (several times faster than the same copy of the 4-D views).
                    width = self.length * old.size(2) * old.size(3)
                    torch.index_select(old.view(old.size(0), -1)[:, :width], 0, rows,
                                       out=new.view(n, -1)[:, :width])
            if "k" in layer:
                self.slots[index] = slot
            if sentences is not None:
                for name in ("memory_k", "memory_v"):
                    if name in layer:
                        layer[name] = layer[name].index_select(0, sentences)


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """(n_positions, d_model): sin(p * w_i) in the first half, cos(p * w_i) in the second, w_i = 10000^(-2i/d)
    (Vaswani et al.; MarianMT's table)."""
    frequencies = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


FAIRSEQ_POSITION_OFFSET = 2  # fairseq's first position: its padding id (1) + 1


def fairseq_sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """(n_positions, d_model): fairseq's table (M2M100, NLLB), from its first position on: w_i =
    10000^(-i/(d/2 - 1)), sines then cosines, computed in fp32 as fairseq does; nmt's position p is
    fairseq's p + FAIRSEQ_POSITION_OFFSET."""
    half = d_model // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.int64).float() * -(math.log(10000) / (half - 1)))
    positions = torch.arange(FAIRSEQ_POSITION_OFFSET, n_positions + FAIRSEQ_POSITION_OFFSET, dtype=torch.int64).float()
    angles = positions[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def position_table(c: ModelConfig) -> torch.Tensor:
    """The fixed position table of `c.positions` (sinusoidal or sinusoidal_fairseq)."""
    table = fairseq_sinusoidal_table if c.positions == "sinusoidal_fairseq" else sinusoidal_table
    return table(c.max_positions, c.d_model)


class Dropout(nn.Module):
    """`nn.Dropout` with a cheaper mask on the CPU, where torch's `bernoulli_` spends ~7 ns a number.

    One 64-bit draw of the generator gives four 16-bit numbers; an element is kept when its number
    is at least p * 65536 (rounded), so the dropped fraction is p to within 1/131072, and kept
    elements are scaled by the inverse of the exact keep probability. Same generator, so seeding and
    resume stay exact. On other devices, and under torch.compile, it is `F.dropout` itself.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A mask shaped like x: 0 with probability ~p, else 1 / (1 - that probability); see `Dropout`."""
    threshold = min(round(p * 65536), 65535)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    numbers = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    return ((numbers >= threshold - 32768) * (65536 / (65536 - threshold))).to(x.dtype)


def attention_bias(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean "may attend" mask in SDPA's additive form (0 or -inf), in the dtype the attention will
    compute in (autocast's, else `like`'s): made once per pass, where SDPA would convert a boolean
    mask again in each layer's call."""
    device = like.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else like.dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class Attention(nn.Module):
    """What self- and cross-attention share: SDPA, merging the heads, the output projection.

    The input projections are fused where they read the same tensor: self-attention projects
    queries, keys and values with one (3D, D) matrix, cross-attention the memory's keys and values
    with one (2D, D) matrix (its queries come from the decoder). One matrix multiply for three (or
    two) cuts the launches of the projections and of their gradients. Checkpoints with separate
    `q_proj`, `k_proj`, `v_proj` (written before the fusion) load unchanged: see `fuse_projections`.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.recorded: Optional[list[torch.Tensor]] = None  # set to a list to collect attention weights

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """x (B, L, parts * D) -> `parts` views (B, H, L, D/H).

        Split along the parts first, then transposed: the gradients then stack back into x's own
        layout, where splitting after the transpose would need a copy of them to view them as x.
        """
        B, L, _ = x.shape
        return tuple(part.transpose(1, 2) for part in x.view(B, L, parts, self.n_heads, -1).unbind(2))

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
              causal: bool) -> torch.Tensor:
        """q (B, H, L, D/H) attends to k, v (B, H, S, D/H) -> (B, H, L, D/H).

        Training in bf16 on a CPU, the attention itself runs in fp32: the CPU kernel's bf16 backward
        takes many times its fp32 one (bench/README.md), far more than the casts to fp32 and back;
        the projections around it stay in bf16 (`nmt.precision.CPU_BF16_WORKAROUNDS`).
        """
        dropout = self.dropout if self.training else 0.0
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad and precision.CPU_BF16_WORKAROUNDS:
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal, dropout_p=dropout,
                                                     attn_mask=None if mask is None else mask.float())
            out = out.to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        if self.recorded is not None:
            # The weights themselves, from the same kernel: attending over identity "values" returns them.
            B, H, S = k.size(0), k.size(1), k.size(2)
            eye = torch.eye(S, dtype=q.dtype, device=q.device).expand(B, H, S, S)
            self.recorded.append(F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, is_causal=causal))  # (B, H, L, S)
        return out


class SelfAttention(Attention):
    """Queries, keys and values of the same x, projected by one matrix (`qkv_proj`: [Wq; Wk; Wv])."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.register_load_state_dict_pre_hook(functools.partial(fuse_projections, fused="qkv", parts="qkv"))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, causal: bool = False,
                cache: Optional[Cache] = None, index: int = 0) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D). With a cache (decoder layer `index`), x holds only the new
        positions, whose keys and values join the cached ones."""
        B, L, D = x.shape
        q, k, v = self._heads(self.qkv_proj(x), 3)  # (B, H, L, D/H) each
        if cache is not None:
            k, v = cache.append(index, k, v)  # with the earlier positions, (B, H, t, D/H)
        out = self._sdpa(q, k, v, mask, causal)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class CrossAttention(Attention):
    """Queries from the decoder (`q_proj`), keys and values from the memory by one matrix (`kv_proj`: [Wk; Wv])."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.register_load_state_dict_pre_hook(functools.partial(fuse_projections, fused="kv", parts="kv"))

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, D) -> keys, values (B, H, S, D/H), computed once per sentence."""
        k, v = self._heads(self.kv_proj(memory), 2)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Queries of x (N, L, D) attend to k, v (B, H, S, D/H); returns (N, L, D).

        N may be a multiple G of B (G beam rows per sentence): the G*L queries of a sentence then
        attend to its keys in one call, without copying keys per row.
        """
        N, L, D = x.shape
        B, H = k.size(0), self.n_heads
        G = N // B
        q = self.q_proj(x).view(B, G, L, H, D // H).permute(0, 3, 1, 2, 4).reshape(B, H, G * L, D // H)
        out = self._sdpa(q, k, v, mask, causal=False)
        return self.out_proj(out.view(B, H, G, L, D // H).permute(0, 2, 3, 1, 4).reshape(N, L, D))


def fuse_projections(module: Optional[nn.Module], state_dict: dict, prefix: str, *args, fused: str, parts: str) -> None:
    """Load-time upgrade of weights with one projection per part (`q_proj`, `k_proj`, `v_proj`: how
    checkpoints were written before the fusion, and how MarianMT names them): their weights and
    biases, concatenated in order, become the fused layer's (`qkv_proj`, `kv_proj`)."""
    for kind in ("weight", "bias"):
        names = [f"{prefix}{part}_proj.{kind}" for part in parts]
        if all(name in state_dict for name in names):
            state_dict[f"{prefix}{fused}_proj.{kind}"] = torch.cat([state_dict.pop(name) for name in names])


def fused_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole state dict in the fused layout: what the load-time hooks do (`fuse_projections`), for
    code that reads weights without a model (averaging checkpoints)."""
    out = dict(state_dict)
    for name in state_dict:
        for attention, fused, parts in (("self_attn", "qkv", "qkv"), ("cross_attn", "kv", "kv")):
            if name.endswith(f".{attention}.{parts[0]}_proj.weight"):
                fuse_projections(None, out, name.removesuffix(f"{parts[0]}_proj.weight"), fused=fused, parts=parts)
    return out


def split_projections(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `fuse_projections` over a whole state dict: each `qkv_proj` and `kv_proj`
    entry split into separate `q_proj`, `k_proj`, `v_proj` entries (for exports that keep them apart)."""
    out = {}
    for name, tensor in state_dict.items():
        stem, _, kind = name.rpartition(".")
        layer, _, fused = stem.rpartition(".")
        if fused in ("qkv_proj", "kv_proj"):
            parts = fused.removesuffix("_proj")
            out.update({f"{layer}.{part}_proj.{kind}": chunk for part, chunk in zip(parts, tensor.chunk(len(parts)))})
        else:
            out[name] = tensor
    return out


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.activation = {"gelu": F.gelu, "swish": F.silu}.get(activation, F.relu)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class Residual(nn.Module):
    """x + dropout(sublayer(norm(x))) in pre-norm, norm(x + dropout(sublayer(x))) in post-norm."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.activation, c.activation_dropout)
        self.attn_block = Residual(c.d_model, c.dropout, c.norm_first)
        self.ff_block = Residual(c.d_model, c.dropout, c.norm_first)

    def forward(self, x: torch.Tensor, src_bias: torch.Tensor) -> torch.Tensor:
        """x (B, S, D); src_bias (B, 1, 1, S), see `attention_bias`."""
        return self.ff_block(self.attn_block(x, functools.partial(self.self_attn, mask=src_bias)), self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.cross_attn = CrossAttention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.activation, c.activation_dropout)
        self.self_block = Residual(c.d_model, c.dropout, c.norm_first)
        self.cross_block = Residual(c.d_model, c.dropout, c.norm_first)
        self.ff_block = Residual(c.d_model, c.dropout, c.norm_first)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, src_bias: torch.Tensor,
                cache: Optional[Cache] = None, index: int = 0) -> torch.Tensor:
        """x (N, T, D); memory (B, S, D) with N a multiple of B (see `Cache`).

        With a cache (this is decoder layer `index`), x holds only the new positions.
        """
        def self_attention(h: torch.Tensor) -> torch.Tensor:
            if cache is not None and cache.length > 0 and h.size(1) > 1:
                raise ValueError("a block of new positions after cached ones is not supported; decode one at a time")
            # A block of queries needs the causal mask; a single new query may see every cached key.
            # Decided by Python state, never by a (symbolic, under torch.compile) length.
            causal = cache is None or cache.length == 0
            return self.self_attn(h, causal=causal, cache=cache, index=index)

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            state = cache.layers[index] if cache is not None else {}
            if "memory_k" not in state:  # computed once per sentence, reused at every step
                state["memory_k"], state["memory_v"] = self.cross_attn.project_memory(memory)
            return self.cross_attn(h, state["memory_k"], state["memory_v"], src_bias)

        x = self.self_block(x, self_attention)
        x = self.cross_block(x, cross_attention)
        return self.ff_block(x, self.ff)


class Embedding(nn.Module):
    """Token embedding * sqrt(d_model) (unless `scale_embeddings` is off) + position encoding, then dropout."""

    def __init__(self, tokens: nn.Embedding, c: ModelConfig) -> None:
        super().__init__()
        self.tokens, self.scale = tokens, math.sqrt(c.d_model) if c.scale_embeddings else 1.0
        self.learned = nn.Embedding(c.max_positions, c.d_model) if c.positions == "learned" else None
        if self.learned is None:
            self.register_buffer("table", position_table(c), persistent=False)
        self.dropout = Dropout(c.dropout)
        self.max_positions = c.max_positions

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        end = start + ids.size(1)
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} positions exceeds max_positions={self.max_positions}")
        positions = self.learned.weight[start:end] if self.learned is not None else self.table[start:end]
        return self.dropout(self.tokens(ids) * self.scale + positions)


class Transformer(nn.Module):
    """Encoder-decoder transformer. `encode` once, then `decode` in full or step by step with a cache."""

    def __init__(self, c: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0, bos_id: int = 2,
                 eos_id: int = 3) -> None:
        super().__init__()
        self.config, self.pad_id = c, pad_id
        self.start_id = {"pad": pad_id, "bos": bos_id, "eos": eos_id}[c.decoder_start]  # first decoder input
        if c.share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError("shared embeddings need equal source and target vocabularies")
        tgt_tokens = nn.Embedding(tgt_vocab_size, c.d_model, padding_idx=pad_id)
        src_tokens = tgt_tokens if c.share_embeddings else nn.Embedding(src_vocab_size, c.d_model, padding_idx=pad_id)
        self.src_embed, self.tgt_embed = Embedding(src_tokens, c), Embedding(tgt_tokens, c)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        tied = c.share_embeddings or c.tie_output
        self.output = None if tied else nn.Linear(c.d_model, tgt_vocab_size, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(tgt_vocab_size)) if c.output_bias else None
        self._init_weights()

    def reset_buffers(self) -> None:
        """Make the position tables anew, on the device of the weights (after weights were assigned to a model
        built on the meta device)."""
        for embed in (self.src_embed, self.tgt_embed):
            if embed.learned is None:
                embed.table = position_table(self.config).to(embed.tokens.weight.device)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                # Embeddings are scaled up by sqrt(d_model), so start them at std d_model**-0.5.
                nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) ids -> memory (B, S, D) and src_mask (B, 1, 1, S), True at real tokens."""
        src_mask = (src != self.pad_id)[:, None, None, :]
        x = self.src_embed(src)
        bias = attention_bias(src_mask, x)
        for layer in self.encoder:
            x = layer(x, bias)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               cache: Optional[Cache] = None, keep: Optional[torch.Tensor] = None, project: bool = True,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tgt_in (N, T) -> logits (N, T, V). With a cache, tgt_in holds only the positions not yet seen,
        and N may be a multiple of memory's B (see `Cache`).

        With `keep` (n,), flat indices into the N*T positions, only those are projected onto the
        vocabulary: logits (n, V). Training passes the non-padding targets, so no work is spent on
        padded positions' logits. With `project=False` the decoder's outputs are returned before the
        projection, (N, T, D) or (n, D), for a loss that projects them itself (see `output_weight`).
        `out`, a tensor shaped like the logits, may receive them (a search reuses one from step to
        step); it is used outside autograd, with a plain output projection, and the result is returned.
        """
        x = self.tgt_embed(tgt_in, cache.length if cache is not None else 0)
        bias = attention_bias(src_mask, x)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, bias, cache, i)
        if cache is not None:
            cache.length += tgt_in.size(1)
        x = self.decoder_norm(x)
        if keep is not None:
            x = x.reshape(-1, x.size(-1)).index_select(0, keep)  # (n, D)
        if not project:
            return x
        if out is not None and not torch.is_grad_enabled() and (self.output is None or type(self.output) is nn.Linear):
            logits = torch.matmul(x, self.output_weight().t(), out=out)
        else:  # a module call when there is an output layer, so that int8 quantization can replace it
            logits = F.linear(x, self.output_weight()) if self.output is None else self.output(x)  # (B, T, V)
        if self.output_bias is not None:
            logits += self.output_bias
        if not self.config.pad_in_softmax:
            logits[..., self.pad_id] = float("-inf")  # padding is no class at all (a column write, not a bias add)
        return logits

    def output_weight(self) -> torch.Tensor:
        """(V, D): the output projection's weight (the tied target embedding by default); its bias, where the
        model has one, is `output_bias`."""
        return self.tgt_embed.tokens.weight if self.output is None else self.output.weight

    @torch.no_grad()
    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor) -> list[torch.Tensor]:
        """Cross-attention weights of every decoder layer, each (B, H, T, S), for a teacher-forced target."""
        layers = [layer.cross_attn for layer in self.decoder]
        for attention in layers:
            attention.recorded = []
        try:
            self(src, tgt_in)
            return [attention.recorded[0] for attention in layers]
        finally:
            for attention in layers:
                attention.recorded = None

    def new_cache(self, capacity: int = 64, buffers: Optional[CacheBuffers] = None) -> Cache:
        """An empty decoding cache with room for `capacity` positions (it grows if needed); `buffers`: see `Cache`."""
        return Cache(len(self.decoder), capacity, buffers)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, keep: Optional[torch.Tensor] = None,
                project: bool = True) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask, keep=keep, project=project)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
