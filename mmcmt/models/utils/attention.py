"""Attention with a learnt additive bias: ``softmax(q kᵀ * scale + bias) v``.

PyTorch's fused CPU kernel (flash attention) takes an additive mask (torch
2.3+; before it, the forward below runs a block of queries at a time) but no
gradient for it: when the mask requires grad, ``scaled_dot_product_attention``
falls back to its unfused path, which keeps every attention matrix for the
backward pass (gigabytes at detection sizes). :func:`biased_attention` keeps
the fused forward in training too and gets the gradients, the bias's
included, in a backward pass that recomputes the attention matrix a block of
queries at a time. Elsewhere (inference, CUDA, whose memory-efficient kernel
differentiates the mask itself) it is plain SDPA.

The same fallback happens without any gradient: under ``no_grad`` a mask
that requires grad (the stored bias, used as it is at the pre-training size)
still sends SDPA to its unfused math, so inference passes the bias
detached (measured in docs/advanced_guides/speed_and_memory.md).

A bias that carries a :class:`BiasRecomputation` (the relative position
bias resized to a detection-size grid: hundreds of megabytes per stage,
shared by the stage's blocks) is not kept for the backward pass: it is
computed again there, once for all the blocks that used it.
"""
import torch
import torch.nn.functional as F

from ...compat import HAS_CPU_FLASH_ATTENTION_MASK

#: Elements of one block of the recomputed attention matrix (4 MB in fp32):
#: small enough for a block to stay in the cache between the products and
#: element-wise steps that read it. 64 MB blocks took 1.5x the time
#: (docs/advanced_guides/speed_and_memory.md).
BLOCK_ELEMENTS = 1 << 20


class BiasRecomputation:
    """The means to compute an attention bias again in the backward pass
    instead of keeping it: ``compute()`` gives it as the forward pass had
    it. :meth:`attach` it to the bias; each attention function that keeps
    it instead of the bias (:meth:`keep`) later gets the bias from
    :meth:`get`, computed once for all of them and dropped when the last
    one has it (or at :meth:`release`)."""

    def __init__(self, compute):
        self.compute = compute
        self._bias, self._users, self._given = None, 0, 0

    def attach(self, bias: torch.Tensor) -> torch.Tensor:
        bias._mmcmt_recompute = self
        return bias

    @staticmethod
    def of(bias: torch.Tensor):
        """The recomputation attached to ``bias``, or None."""
        return getattr(bias, '_mmcmt_recompute', None)

    def keep(self) -> 'BiasRecomputation':
        self._users += 1
        return self

    def get(self) -> torch.Tensor:
        bias = self._bias
        if bias is None:
            with torch.no_grad():
                bias = self._bias = self.compute()
        self._given += 1
        if self._given >= self._users:
            self.release()
        return bias

    def release(self):
        self._bias, self._given = None, 0


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor, scale: float) -> torch.Tensor:
    """
    Args:
        q (Tensor): ``(B, heads, N, d)``.
        k, v (Tensor): ``(B, heads, Nk, d)``.
        bias (Tensor): ``(heads, N, Nk)``, shared by the batch.
        scale (float): logit scale.

    Returns:
        Tensor: ``(B, heads, N, d)``.
    """
    if not torch.is_grad_enabled():
        bias = bias.detach()  # or SDPA takes its math path (see above)
    elif q.device.type == 'cpu' and bias.requires_grad:
        return _CPUBiasedAttention.apply(q, k, v, bias, scale)
    # A 4-D mask keeps SDPA on its fused kernels.
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.to(q.dtype).unsqueeze(0), scale=scale)


def factored_biased_attention(q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor, rows: torch.Tensor,
                              cols: torch.Tensor,
                              scale: float) -> torch.Tensor:
    """:func:`biased_attention` with the bias given as ``rows @ cols.T``
    (see :func:`..relative_position.factored_relative_position_bias`):
    ``scale·q·kᵀ + rows·colsᵀ = [scale·q, rows] · [k, cols]ᵀ``, so the
    factors join q and k as extra channels and no ``N x Nk`` bias is ever
    formed. Used by exported (traced) graphs, where the dense bias would be
    resized on every run.

    Args:
        q (Tensor): ``(B, heads, N, d)``; k, v ``(B, heads, Nk, d)``.
        rows (Tensor): ``(heads, N, S)``; cols ``(Nk, S)``.

    Returns:
        Tensor: ``(B, heads, N, d)``.
    """
    batch, heads = q.shape[:2]
    q = torch.cat(
        [q * scale, rows.unsqueeze(0).expand(batch, -1, -1, -1)], dim=-1)
    k = torch.cat([k, cols.expand(batch, heads, -1, -1)], dim=-1)
    # explicit: the graph ONNX gets from SDPA anyway (MatMul, Softmax,
    # MatMul), and torch 2.1's exporter cannot take SDPA's scale
    return torch.softmax(q @ k.transpose(-2, -1), -1) @ v


def onnx_runtime_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           bias: torch.Tensor, num_heads: int,
                           scale: float) -> torch.Tensor:
    """:func:`biased_attention` on unsplit heads, exported as ONNX Runtime's
    fused ``com.microsoft.MultiHeadAttention`` with an attention-bias input:
    one node instead of MatMul, Add, Softmax, MatMul, whose CPU kernel
    splits the heads itself (no transposes in the graph).

    Args:
        q (Tensor): ``(B, N, C)``; k, v ``(B, Nk, C)``, heads side by side.
        bias (Tensor): ``(heads, N, Nk)``, shared by the batch.
        num_heads (int): heads.
        scale (float): logit scale.

    Returns:
        Tensor: ``(B, N, C)``.
    """
    return _OnnxRuntimeAttention.apply(q, k, v, bias, num_heads, scale)


class _OnnxRuntimeAttention(torch.autograd.Function):
    """PyTorch computes it; the TorchScript ONNX exporter writes the
    ``symbolic`` node."""

    @staticmethod
    def forward(ctx, q, k, v, bias, num_heads, scale):
        B, N, C = q.shape
        q, k, v = (
            t.unflatten(-1, (num_heads, -1)).transpose(1, 2)
            for t in (q, k, v))
        out = biased_attention(q, k, v, bias, scale)
        return out.transpose(1, 2).reshape(B, N, C)

    @staticmethod
    def symbolic(g, q, k, v, bias, num_heads, scale):
        absent = g.op('prim::Constant')  # an omitted optional input
        absent.setType(torch._C.OptionalType.ofTensor())
        # inputs: query, key, value, bias (of the projections),
        # key_padding_mask, attention_bias (B or 1, heads, N, Nk)
        out = g.op(
            'com.microsoft::MultiHeadAttention',
            q,
            k,
            v,
            absent,
            absent,
            g.op('Unsqueeze', bias,
                 g.op('Constant', value_t=torch.tensor([0]))),
            num_heads_i=num_heads,
            scale_f=scale)
        out.setType(q.type())  # (B, N, C), as the query
        return out


def _query_blocks(q: torch.Tensor, k: torch.Tensor):
    """Slices of the queries whose logits take :data:`BLOCK_ELEMENTS`."""
    B, heads, N, _ = q.shape
    step = max(1, BLOCK_ELEMENTS // (B * heads * k.shape[2]))
    return (slice(i, i + step) for i in range(0, N, step))


def _blockwise_attention(q, k, v, bias, scale):
    """The fused kernel's outputs, a block of queries at a time (torch
    without a masked CPU flash kernel): the attention and its log-sum-exp
    (float32 at least), never the whole ``N x Nk`` matrix."""
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=acc)
    for rows in _query_blocks(q, k):
        logits = torch.matmul(q[:, :, rows], k.transpose(-2, -1)).to(acc)
        logits.mul_(scale).add_(bias[:, rows])
        lse[:, :, rows] = torch.logsumexp(logits, -1)
        weights = logits.sub_(lse[:, :, rows, None]).exp_()
        out[:, :, rows] = torch.matmul(weights.to(v.dtype), v)
    return out, lse


class _CPUBiasedAttention(torch.autograd.Function):
    """Fused forward (blockwise where torch lacks the masked CPU kernel);
    blockwise backward (the flash-attention gradients, ``dS = P * (dP -
    rowsum(dO * O))``, in float32 at least)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        if HAS_CPU_FLASH_ATTENTION_MASK:
            out, lse = \
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, attn_mask=bias.to(q.dtype).unsqueeze(0),
                    scale=scale)
        else:
            out, lse = _blockwise_attention(q, k, v, bias, scale)
        ctx.recomputation = BiasRecomputation.of(bias)
        if ctx.recomputation is None:
            ctx.save_for_backward(q, k, v, bias, out, lse)
        else:  # the bias computed again in the backward pass
            ctx.recomputation.keep()
            ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.recomputation is None:
            q, k, v, bias, out, lse = ctx.saved_tensors
        else:
            q, k, v, out, lse = ctx.saved_tensors
            bias = ctx.recomputation.get()
        scale = ctx.scale
        acc = torch.promote_types(q.dtype, torch.float32)
        B, heads, N, d = q.shape
        # batched matrices (B * heads, rows, columns), q scaled once
        q32 = (q.to(acc) * scale).reshape(B * heads, N, d)
        k32, v32 = (t.to(acc).reshape(B * heads, -1, d) for t in (k, v))
        grad_out = grad_out.to(acc)
        delta = (grad_out * out.to(acc)).sum(-1).view(B * heads, N, 1)
        grad_out = grad_out.reshape(B * heads, N, d)
        dq = torch.empty_like(q32)
        dk, dv = torch.zeros_like(k32), torch.zeros_like(v32)
        dbias = torch.empty_like(bias, dtype=acc)
        for rows in _query_blocks(q, k):
            q_i, do_i = q32[:, rows], grad_out[:, rows]
            # P, recomputed from the saved log-sum-exp: the product added
            # to bias - lse by the GEMM
            p = torch.sub(bias[:, rows],
                          lse[:, :, rows, None]).view(B * heads, -1,
                                                      k.shape[2])
            p.baddbmm_(q_i, k32.transpose(1, 2)).exp_()
            dv.baddbmm_(p.transpose(1, 2), do_i)
            ds = torch.bmm(do_i, v32.transpose(1, 2))
            ds.sub_(delta[:, rows]).mul_(p)
            torch.sum(
                ds.view(B, heads, -1, ds.shape[-1]), 0, out=dbias[:, rows])
            dq[:, rows] = torch.bmm(ds, k32)
            dk.baddbmm_(ds.transpose(1, 2), q_i)  # scale in q_i
        dq.mul_(scale)
        dq, dk, dv = (t.view(B, heads, -1, d) for t in (dq, dk, dv))
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                dbias.to(bias.dtype), None)
