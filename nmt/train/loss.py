"""The label-smoothed cross-entropy of the output projection, chunked, with its gradients made on the spot."""

from __future__ import annotations

from typing import Optional

import torch

from nmt import precision
from nmt.tokenizer import PAD_ID


def label_smoothed_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, smoothing: float,
                        chunk_elements: Optional[int] = None, bias: Optional[torch.Tensor] = None,
                        pad_in_softmax: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL of the logits hidden @ weight.T (+ bias) over
    non-padding targets.

    hidden (n, D) decoder outputs, weight (V, D) the output projection, bias (V,) its bias if it has
    one, target (n,). Smoothing spreads `smoothing` of the mass uniformly over the vocabulary but
    padding (Szegedy et al., 2016), as in the transformer paper; padding's logit is -inf, so it is no
    class, unless `pad_in_softmax` (the model's option of that name) keeps it in the softmax.

    The logits are the largest tensors of a step, so they are never all made at once: a chunk of
    `chunk_elements` logits at a time, each chunk's gradients (softmax minus the smoothed one-hot,
    then through the projection) taken on the spot. On a CPU, chunks of 2^20 logits (4 MB) are
    reused heap memory, where an (n, V) tensor is fresh pages from the system every step; a GPU
    gets larger chunks (2^25), so that kernel launches stay few.
    """
    if chunk_elements is None:
        chunk_elements = 2 ** 25 if hidden.is_cuda else 2 ** 20
    return _SmoothedLoss.apply(hidden, weight, target, smoothing, max(1, chunk_elements // weight.size(0)), bias,
                               pad_in_softmax)


def _smoothed_chunk(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, u: torch.Tensor, smoothing: float,
                    gradient: bool, out: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                    bias_sum: float | torch.Tensor = 0.0, pad_in_softmax: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Loss and NLL sums of one chunk of rows, and the softmax (rows, V) in h's dtype when `gradient`
    (written into `out` if given).

    u (D,) is the sum of the real classes' weight rows (and `bias_sum` that of their biases), so a
    row's logit sum over the real classes is h @ u + bias_sum, without a pass over the logits. Only
    two passes touch all of them besides the matrix multiply: the row-wise fused log-softmax, and
    exp for the softmax.
    """
    assert PAD_ID == 0  # the classes are the columns after it
    V = w.size(0)
    x = (h @ w.t()).float()  # (rows, V) logits
    if bias is not None:
        x += bias
    if not pad_in_softmax:
        x[:, PAD_ID] = float("-inf")
    log_probs = torch.log_softmax(x, dim=-1)
    real, zero = t != PAD_ID, x.new_zeros(())
    nll = torch.where(real, -log_probs.gather(1, t[:, None]).squeeze(1), zero)  # -log p(target)
    loss = (1 - smoothing) * nll
    if smoothing:  # -mean log p over the real classes = log-normaliser - mean logit
        normaliser = x.gather(1, t[:, None]).squeeze(1) + nll  # logit - log p of the target
        loss = loss + smoothing * torch.where(real, normaliser - (h.float() @ u + bias_sum) / (V - 1), zero)
    if not gradient:
        return loss.sum(), nll.sum(), None
    if h.dtype == torch.float32 and out is None:
        return loss.sum(), nll.sum(), log_probs.exp_()
    # exp and the cast to the matrix multiplies' dtype in one pass
    out = torch.empty(x.shape, dtype=h.dtype, device=x.device) if out is None else out
    return loss.sum(), nll.sum(), torch.exp(log_probs, out=out)


class _SmoothedLoss(torch.autograd.Function):
    """`label_smoothed_loss` with its gradients made in the forward pass, chunk by chunk.

    d(loss)/d(logits) is softmax - (1 - s) one_hot(target) - s / (V - 1) on the real classes, on
    real rows. Only the softmax goes through the matrix multiplies; the two constant parts are
    added to the gradients directly: rows of the weight for the hidden states' gradient, hidden
    rows (and their sum) into the weight's gradient. No pass over the logits is spent on them.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, smoothing: float,  # type: ignore[override]
                rows: int, bias: Optional[torch.Tensor] = None, pad_in_softmax: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        device = hidden.device.type
        # Under autocast the matrix multiplies run in its dtype, spelled out: in-place ops are not autocast.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        gradient = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device) if gradient else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        nll = torch.zeros_like(loss)
        V = weight.size(0)
        uniform = smoothing / (V - 1)
        cpu_bf16 = dtype != torch.float32 and device == "cpu" and precision.CPU_BF16_WORKAROUNDS
        grad_hidden = torch.empty_like(hidden) if gradient else None
        # The bias's gradient: the rows' softmaxes summed, less the smoothed one-hot targets (added at the end).
        grad_bias = torch.zeros(V, dtype=torch.float32, device=hidden.device) if gradient and bias is not None else None
        bias_sum = bias[PAD_ID + 1:].float().sum() if bias is not None and smoothing else 0.0  # stays on the device
        bias = bias.float() if bias is not None else None
        n_real = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # On a CPU in bf16, the weight's gradient is taken over groups of 4 chunks: each product is added
        # to the fp32 gradient through a (V, D) cast that cost as much as the product itself.
        group = 4 if gradient and cpu_bf16 else 1
        if group > 1:
            softmaxes = torch.empty(group * rows, V, dtype=dtype, device=hidden.device)
            hiddens = torch.empty(group * rows, hidden.size(1), dtype=dtype, device=hidden.device)
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            u = weight[PAD_ID + 1:].float().sum(0)  # (D,) the real classes' rows summed
            real_sum = torch.zeros(weight.size(1), dtype=torch.float32, device=hidden.device)
            for index, start in enumerate(range(0, hidden.size(0), rows)):
                h, t = hidden[start:start + rows].to(dtype), target[start:start + rows]
                count = h.size(0)
                if cpu_bf16 and count < rows:
                    # oneDNN builds a kernel for every new shape of a bf16 matrix multiply (bench/README.md), and
                    # the last chunk's row count changes with every batch: padding rows (no target) keep it whole.
                    h = torch.nn.functional.pad(h, (0, 0, 0, rows - count))
                    t = torch.nn.functional.pad(t, (0, rows - count), value=PAD_ID)
                slot = slice((index % group) * rows, (index % group) * rows + h.size(0))
                chunk_loss, chunk_nll, softmax = _smoothed_chunk(h, w, t, u, smoothing, gradient,
                                                                 softmaxes[slot] if group > 1 else None, bias,
                                                                 bias_sum, pad_in_softmax)
                loss += chunk_loss
                nll += chunk_nll
                if softmax is None:
                    continue
                real = (t != PAD_ID)[:, None]
                g_h = (softmax @ w).float() - (1 - smoothing) * weight[t].float() - uniform * u
                grad_hidden[start:start + count] = (g_h * real)[:count]
                h_real_low = h * real  # padding rows send no gradient anywhere
                h_real = h_real_low.float()
                if dtype == torch.float32:
                    grad_weight.addmm_(softmax.t(), h_real)
                elif group == 1:
                    grad_weight += softmax.t() @ h_real_low
                else:
                    hiddens[slot] = h_real_low
                    if index % group == group - 1 or start + rows >= hidden.size(0):
                        grad_weight += softmaxes[:slot.stop].t() @ hiddens[:slot.stop]
                grad_weight.index_add_(0, t, h_real, alpha=-(1 - smoothing))
                real_sum += h_real.sum(0)
                if grad_bias is not None:
                    real_rows = real[:, 0].to(softmax.dtype)
                    grad_bias += (real_rows @ softmax).float()
                    grad_bias.index_add_(0, t, real_rows.float(), alpha=-(1 - smoothing))
                    n_real += real_rows.float().sum()
            if gradient and smoothing:
                grad_weight[PAD_ID + 1:] -= uniform * real_sum
                if grad_bias is not None:
                    grad_bias[PAD_ID + 1:] -= uniform * n_real
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused: torch.Tensor):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad, grad_weight * grad, None, None, None,
                None if grad_bias is None else grad_bias * grad, None)
