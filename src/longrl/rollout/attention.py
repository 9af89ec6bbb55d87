"""Attention for rollout: chunked prefill, and the cascade decode over one shared prefix.

Cascade decode (design note 1): the prefix KV ``[Hkv, P, D]`` of a prompt is stored once. At a
decode step its n samples' queries ``[n, Hq, D]`` are folded, with the GQA group, into the rows
of one dense attention per KV head (``[Hkv, n*G, D]`` against ``[Hkv, P, D]``), which reads the
prefix once for the whole group. Each sample then attends to its own short suffix KV, and the
two partial results merge by their log-sum-exp.

On GPU the decode step uses the Triton split-KV kernel of ``kernels.py`` for the prefix part;
``prefix_partials`` here is the fallback without Triton (flash attention over KV splits laid on
the flash kernel's head axis) and, on CPU and in fp32, a plain fp32 matmul softmax.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def attention_lse_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention with log-sum-exp: q [..., Lq, D], k/v [..., Lk, D] -> fp32
    (out [..., Lq, D], lse [..., Lq]). ``valid`` (bool, broadcast to [..., Lq, Lk]) masks keys."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    return torch.matmul(probs, v.float()), lse


def merge_partials(out: torch.Tensor, lse: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention partials over disjoint key sets stacked on ``dim`` of ``lse``
    (``out`` has one more trailing axis). Returns fp32 (out, lse) with ``dim`` reduced."""
    total = torch.logsumexp(lse, dim=dim, keepdim=True)
    weight = torch.exp(lse - total)
    merged = (out.float() * weight[..., None]).sum(dim=dim)
    return merged, total.squeeze(dim)


def _split_length(prefix_len: int, kv_heads: int, device: torch.device) -> int:
    """KV split size for the flash prefix path: about two thread blocks per SM, >= 256 keys each."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    splits = max(1, (2 * sms) // kv_heads)
    return max(256, math.ceil(prefix_len / splits / 128) * 128)


def _flash_with_lse(q, k, v, scale):
    """Flash attention forward that also returns the log-sum-exp (natural log) of each query row."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    return out, lse[..., : q.shape[2]]


def prefix_partials(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Unmerged attention of one prompt's samples ``q [n, Hq, D]`` over its prefix ``k/v [Hkv, P, D]``.

    Returns partials (out [Hkv, S, R, D], lse [Hkv, S, R]) over S disjoint key ranges, with the
    group folded into R = n*G rows; :func:`attention_epilogue` merges them."""
    hkv = k.shape[0]
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        out, lse = attention_lse_math(fold_queries(q, hkv), k, v, scale)
        return [(out[:, None], lse[:, None])]
    n, hq, dim = q.shape
    group = hq // hkv
    prefix_len = k.shape[1]
    split = _split_length(prefix_len, hkv, q.device)
    splits, tail = divmod(prefix_len, split)
    # Fold and replicate the queries over the splits in one copy: [Hkv, S, n*G, D].
    qs = torch.empty(hkv, max(splits, 1), n, group, dim, dtype=q.dtype, device=q.device)
    qs.copy_(q.reshape(n, hkv, group, dim).transpose(0, 1)[:, None].expand_as(qs))
    qs = qs.view(hkv, -1, n * group, dim)
    parts = []
    if splits:
        # [Hkv, P, D] viewed as [Hkv, splits, split, D]: the splits ride the flash kernel's head axis.
        ks = k[:, : splits * split].view(hkv, splits, split, dim)
        vs = v[:, : splits * split].view(hkv, splits, split, dim)
        parts.append(_flash_with_lse(qs, ks, vs, scale))
    if tail:
        parts.append(_flash_with_lse(qs[:, :1], k[:, None, splits * split :], v[:, None, splits * split :], scale))
    return parts


def fold_queries(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[n, Hq, D] -> [Hkv, n*G, D]: the group's queries become rows of one attention per KV head."""
    n, hq, dim = q.shape
    return q.reshape(n, kv_heads, hq // kv_heads, dim).transpose(0, 1).reshape(kv_heads, -1, dim)


def unfold_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`fold_queries` for [Hkv, n*G, ...] -> [n, Hq, ...]."""
    hkv = x.shape[0]
    rest = x.shape[2:]
    return x.view(hkv, n, -1, *rest).transpose(0, 1).reshape(n, -1, *rest)


def suffix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own response KV: q [B, Hq, D], k/v [B, Hkv, W, D] with the first ``length``
    (0-d tensor, >= 1) entries valid. Returns fp32 (out [B, Hq, D], lse [B, Hq])."""
    b, hq, dim = q.shape
    hkv, window = k.shape[1], k.shape[2]
    qg = q.reshape(b, hkv, hq // hkv, 1, dim).float()
    # Broadcast-multiply-reduce rather than matmul: a few dozen keys per row, and the compiler
    # fuses it with the softmax and the merges into one kernel instead of two small GEMMs.
    scores = (qg * k[:, :, None].float()).sum(-1) * scale  # [B, Hkv, G, W]
    valid = torch.arange(window, device=q.device) < length
    scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    out = (probs[..., None] * v[:, :, None].float()).sum(-2)  # [B, Hkv, G, D]
    return out.reshape(b, hq, dim), lse.reshape(b, hq)


def attention_epilogue(
    q: torch.Tensor,
    prefix_parts: list[list[tuple[torch.Tensor, torch.Tensor]]],
    n: int,
    suffix_k: torch.Tensor,
    suffix_v: torch.Tensor,
    length: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Merge each prompt's prefix partials with every row's suffix attention: [B, Hq, D] in q's dtype.

    Pure tensor arithmetic with static shapes: on GPU it is compiled into a few fused kernels."""
    pre_out, pre_lse = [], []
    for parts in prefix_parts:
        o, l = merge_partials(torch.cat([o for o, _ in parts], 1), torch.cat([l for _, l in parts], 1), dim=1)
        pre_out.append(unfold_rows(o, n))
        pre_lse.append(unfold_rows(l, n))
    suf_out, suf_lse = suffix_attention(q, suffix_k, suffix_v, length, scale)
    out = torch.stack([torch.cat(pre_out), suf_out])
    lse = torch.stack([torch.cat(pre_lse), suf_lse])
    return merge_partials(out, lse, dim=0)[0].to(q.dtype)


def cascade_attention(
    q: torch.Tensor,
    prefixes: list[tuple[torch.Tensor, torch.Tensor]],
    n: int,
    suffix_k: torch.Tensor,
    suffix_v: torch.Tensor,
    length: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention for rows grouped by prompt (prompt i owns rows [i*n, (i+1)*n)).

    q [B, Hq, D]; ``prefixes[i]`` = (k, v) [Hkv, P_i, D]; suffix k/v [B, Hkv, W, D] with ``length``
    valid entries. Returns [B, Hq, D] in q's dtype.
    """
    parts = [prefix_partials(q[i * n : (i + 1) * n], pk, pv, scale) for i, (pk, pv) in enumerate(prefixes)]
    return attention_epilogue(q, parts, n, suffix_k, suffix_v, length, scale)


def _cudnn_with_lse(q, k, v, causal: bool, scale: float):
    """cuDNN attention (Hopper-native, GQA without repeating KV) with the natural-log LSE [B, Hq, Lq]."""
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)[
        :2
    ]
    return out, lse.reshape(q.shape[0], q.shape[1], -1)[..., : q.shape[2]]


def split_prefill_attention(q, k, v, scale: float, kernel=_cudnn_with_lse, bucket: int = 1) -> torch.Tensor:
    """:func:`prefill_attention` as two calls of ``kernel(q, k, v, causal, scale) -> (out, lse)``:
    the chunk over the keys before it (no mask) and over its own keys (plain causal), merged by
    log-sum-exp. Bottom-right causal masks and GQA are what slow kernels down; this form needs
    neither.

    ``bucket``: the chunk is zero-padded at its end to a multiple of this many tokens, and the
    kernel gets fresh contiguous tensors. cuDNN builds a plan for every new shape and stride
    (0.07-1.5 s on an H100), so prompts whose lengths differ by a few tokens must share shapes;
    a padded key is seen only by padded queries (causal), whose outputs are dropped."""
    c, e = q.shape[2], k.shape[2]
    past = e - c
    pad = (0, 0, 0, -c % bucket)  # the sequence axis, at the end
    q = F.pad(q, pad)
    out, lse = kernel(q, F.pad(k[:, :, past:], pad), F.pad(v[:, :, past:], pad), True, scale)
    if past:
        out_past, lse_past = kernel(q, k[:, :, :past].contiguous(), v[:, :, :past].contiguous(), False, scale)
        out, _ = merge_partials(torch.stack([out_past, out]), torch.stack([lse_past, lse]), dim=0)
    return out[:, :, :c].to(q.dtype)


PREFILL_BUCKET = 512  # tokens; at most 511 padded queries per chunk (~3% more attention at 16k)
_cudnn_prefill = True  # set False by the first failure (a GPU or dtype cuDNN's kernel does not take)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """A prefill chunk: q [1, Hq, c, D] are the last c positions of k/v [1, Hkv, e, D]; each query
    sees every earlier key and the chunk causally (bottom-right aligned). Returns [1, Hq, c, D].

    On a GPU in bf16/fp16: :func:`split_prefill_attention` on cuDNN's kernels (H100: ~570-640
    TFLOP/s against ~310-350 for flash attention with a bottom-right mask, notes/rollout.md)."""
    global _cudnn_prefill
    hq, c = q.shape[1], q.shape[2]
    hkv, e = k.shape[1], k.shape[2]
    if _cudnn_prefill and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        try:
            return split_prefill_attention(q, k, v, scale, bucket=PREFILL_BUCKET)
        except RuntimeError as error:
            _cudnn_prefill = False
            warnings.warn(
                f"cuDNN attention unavailable ({str(error).splitlines()[0][:200]}); prefill uses "
                "flash attention with repeated KV heads (slower)",
                stacklevel=2,
            )
    if q.is_cuda:
        # Flash attention serves the bottom-right causal bias with equal head counts: repeat the
        # KV heads (transient, one layer) rather than fall back to a materialised [c, e] mask.
        if hq != hkv:
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(c, e), scale=scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal_lower_right(c, e), scale=scale, enable_gqa=hq != hkv
    )
