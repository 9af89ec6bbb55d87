"""Triton kernels of the decode step (GPU only; imported lazily, so CPU installs need no Triton).

The whole attention of a decode step is two launches per layer (one more per extra prompt):

``decode_attention_kernel``: one grid does the cascade's prefix part and its suffix part.
  * Prefix programs, split-KV "flash decoding": one program per (KV split, KV head, row tile)
    streams its slice of the prompt's shared prefix KV once and attends all the group's folded
    queries (n samples x GQA group, gathered by index arithmetic, no copy) with an online
    softmax, writing a normalised partial output and its log-sum-exp.
  * Suffix programs, one per (sample, KV head): attend the sample's G query heads to its own
    response KV (the slots before this step, read from the suffix cache, plus this step's key
    and value, kept in registers) and write that as one more partial. They also write this
    step's rotated key and value into the suffix cache (one writer per slot).
  Every program applies the rotary embedding to the raw q/k it loads (the projection's output,
  cos/sin read from a per-sample table at the step index read from device memory), so there is
  no separate rotary/cache-write kernel, and one captured graph serves every step: the suffix
  length is the device step counter, not a launch parameter.
``merge_kernel``: one program per (folded row, KV head) merges that row's partials by their
  log-sum-exp and writes the attention output in the layout the o_proj GEMM reads.

Before, the same work was a rotary+cache-write kernel, the prefix kernel and 2-3 compiled
merge/suffix kernels per layer (notes/rollout.md). (A weight-streaming Triton GEMM for the few
decode rows was also tried and measured slower than cuBLAS on every decoder shape of the 3B
model on an H100.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 inputs (the exact checks) take the exact path; Triton would otherwise use tf32.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _rotary(x_lo, x_hi, cos_lo, cos_hi, sin_lo, sin_hi):
    """Rotate-half rotary on the two halves of the head dim: x * cos + [-x_hi, x_lo] * sin."""
    return x_lo * cos_lo - x_hi * sin_lo, x_hi * cos_hi + x_lo * sin_hi


@triton.jit
def _prefix_part(
    q_ptr, cos_ptr, sin_ptr, pk_ptr, pv_ptr, o_ptr, lse_ptr, t, split, tile, head,
    stride_q, stride_cb, stride_ct, stride_pkh, stride_pkp, stride_pvh, stride_pvp,
    stride_oh, stride_os, stride_or, stride_lh, stride_ls, prefix_len, split_len, rows, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    """One KV split of the shared prefix for a tile of folded rows -> one partial."""
    HALF: tl.constexpr = HEAD_DIM // 2
    dh = tl.arange(0, HALF)
    dd = tl.arange(0, HEAD_DIM)
    dtype = q_ptr.dtype.element_ty
    r = tile * BLOCK_R + tl.arange(0, BLOCK_R)  # folded row: sample r // G, head h*G + r % G
    row_ok = r < rows
    sample = r // GROUP
    q_off = sample * stride_q + (head * GROUP + r % GROUP) * HEAD_DIM
    c_off = sample * stride_cb + t * stride_ct
    q_lo = tl.load(q_ptr + q_off[:, None] + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q_hi = tl.load(q_ptr + q_off[:, None] + HALF + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    cos_lo = tl.load(cos_ptr + c_off[:, None] + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    cos_hi = tl.load(cos_ptr + c_off[:, None] + HALF + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    sin_lo = tl.load(sin_ptr + c_off[:, None] + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    sin_hi = tl.load(sin_ptr + c_off[:, None] + HALF + dh[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q_lo, q_hi = _rotary(q_lo, q_hi, cos_lo, cos_hi, sin_lo, sin_hi)
    q_lo = q_lo.to(dtype)
    q_hi = q_hi.to(dtype)

    start = split * split_len
    end = tl.minimum(start + split_len, prefix_len)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    k_base = pk_ptr + head * stride_pkh
    v_base = pv_ptr + head * stride_pvh
    # Only blocks holding at least one key of this split: a split past a shorter prompt's end
    # (all prompts of a batch share the split count) runs no block and writes an empty partial.
    for i in range(0, tl.cdiv(tl.maximum(end - start, 0), BLOCK_N)):
        n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = n < end
        k_lo = tl.load(k_base + n[:, None] * stride_pkp + dh[None, :], mask=key_ok[:, None], other=0.0)
        k_hi = tl.load(k_base + n[:, None] * stride_pkp + HALF + dh[None, :], mask=key_ok[:, None], other=0.0)
        s = (_dot(q_lo, tl.trans(k_lo), IEEE) + _dot(q_hi, tl.trans(k_hi), IEEE)) * scale_log2
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * stride_pvp + dd[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m = m_new
    has = l > 0
    out = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, (m + tl.log2(tl.where(has, l, 1.0))) * LN2, float("-inf"))  # natural log, like flash's
    o_off = head * stride_oh + split * stride_os + r[:, None] * stride_or + dd[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + head * stride_lh + split * stride_ls + r, lse, mask=row_ok)


@triton.jit
def _suffix_part(
    q_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr, sk_ptr, sv_ptr, o_ptr, lse_ptr, t, sample, head, part,
    stride_q, stride_kn, stride_vn, stride_cb, stride_ct, stride_sb, stride_sh, stride_sp,
    stride_oh, stride_os, stride_or, stride_lh, stride_ls, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_W: tl.constexpr, IEEE: tl.constexpr,
):
    """One sample's G query heads over its own response KV -> partial ``part``; writes this
    step's rotated key and value into the suffix cache at slot t."""
    HALF: tl.constexpr = HEAD_DIM // 2
    dh = tl.arange(0, HALF)
    dd = tl.arange(0, HEAD_DIM)
    dtype = q_ptr.dtype.element_ty
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    q_off = sample * stride_q + (head * GROUP + g) * HEAD_DIM
    c_off = sample * stride_cb + t * stride_ct
    cos_lo = tl.load(cos_ptr + c_off + dh).to(tl.float32)
    cos_hi = tl.load(cos_ptr + c_off + HALF + dh).to(tl.float32)
    sin_lo = tl.load(sin_ptr + c_off + dh).to(tl.float32)
    sin_hi = tl.load(sin_ptr + c_off + HALF + dh).to(tl.float32)
    q_lo = tl.load(q_ptr + q_off[:, None] + dh[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    q_hi = tl.load(q_ptr + q_off[:, None] + HALF + dh[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    q_lo, q_hi = _rotary(q_lo, q_hi, cos_lo[None, :], cos_hi[None, :], sin_lo[None, :], sin_hi[None, :])
    q_lo = q_lo.to(dtype)
    q_hi = q_hi.to(dtype)
    # this step's key (rotated) and value: into the cache at slot t, and used from registers
    kn_off = sample * stride_kn + head * HEAD_DIM
    k_lo = tl.load(kn_ptr + kn_off + dh).to(tl.float32)
    k_hi = tl.load(kn_ptr + kn_off + HALF + dh).to(tl.float32)
    k_lo, k_hi = _rotary(k_lo, k_hi, cos_lo, cos_hi, sin_lo, sin_hi)
    k_lo = k_lo.to(sk_ptr.dtype.element_ty)
    k_hi = k_hi.to(sk_ptr.dtype.element_ty)
    v_new = tl.load(vn_ptr + sample * stride_vn + head * HEAD_DIM + dd)
    s_off = sample * stride_sb + head * stride_sh
    tl.store(sk_ptr + s_off + t * stride_sp + dh, k_lo)
    tl.store(sk_ptr + s_off + t * stride_sp + HALF + dh, k_hi)
    tl.store(sv_ptr + s_off + t * stride_sp + dd, v_new.to(sv_ptr.dtype.element_ty))

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for w0 in range(0, t, BLOCK_W):  # earlier response tokens (none at step 0)
        n = w0 + tl.arange(0, BLOCK_W)
        key_ok = n < t
        ck_lo = tl.load(sk_ptr + s_off + n[:, None] * stride_sp + dh[None, :], mask=key_ok[:, None], other=0.0)
        ck_hi = tl.load(sk_ptr + s_off + n[:, None] * stride_sp + HALF + dh[None, :], mask=key_ok[:, None],
                        other=0.0)
        s = (_dot(q_lo, tl.trans(ck_lo), IEEE) + _dot(q_hi, tl.trans(ck_hi), IEEE)) * scale_log2
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        cv = tl.load(sv_ptr + s_off + n[:, None] * stride_sp + dd[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(cv.dtype), cv, IEEE)
        m = m_new
    # the current token (always present, so every row ends with l > 0)
    s_cur = (tl.sum(q_lo.to(tl.float32) * k_lo.to(tl.float32)[None, :], 1)
             + tl.sum(q_hi.to(tl.float32) * k_hi.to(tl.float32)[None, :], 1)) * scale_log2
    m_new = tl.maximum(m, s_cur)
    alpha = tl.exp2(m - m_new)
    p_cur = tl.exp2(s_cur - m_new)
    l = l * alpha + p_cur
    acc = acc * alpha[:, None] + p_cur[:, None] * v_new.to(tl.float32)[None, :]
    out = acc / l[:, None]
    lse = (m_new + tl.log2(l)) * LN2
    r = sample * GROUP + g  # folded rows of this sample's heads
    o_off = head * stride_oh + part * stride_os + r[:, None] * stride_or + dd[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])
    tl.store(lse_ptr + head * stride_lh + part * stride_ls + r, lse, mask=g_ok)


@triton.jit
def decode_attention_kernel(
    q_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr, step_ptr,
    pk_ptr, pv_ptr, sk_ptr, sv_ptr, o_ptr, lse_ptr,
    stride_q, stride_kn, stride_vn, stride_cb, stride_ct,
    stride_pkh, stride_pkp, stride_pvh, stride_pvp,
    stride_sb, stride_sh, stride_sp,
    stride_oh, stride_os, stride_or, stride_lh, stride_ls,
    prefix_len, split_len, splits, row_tiles, rows, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_W: tl.constexpr, IEEE: tl.constexpr,
):
    # grid: (splits * row_tiles prefix programs + n suffix programs, KV heads). The two parts
    # are separate functions: Triton requires names set in both branches of an `if` to agree in type.
    pid = tl.program_id(0)
    head = tl.program_id(1)
    t = tl.load(step_ptr).to(tl.int32)  # this step's suffix slot; slots [0, t) hold earlier tokens
    if pid < splits * row_tiles:
        _prefix_part(q_ptr, cos_ptr, sin_ptr, pk_ptr, pv_ptr, o_ptr, lse_ptr, t, pid % splits, pid // splits, head,
                     stride_q, stride_cb, stride_ct, stride_pkh, stride_pkp, stride_pvh, stride_pvp,
                     stride_oh, stride_os, stride_or, stride_lh, stride_ls, prefix_len, split_len, rows, scale_log2,
                     GROUP, HEAD_DIM, BLOCK_R, BLOCK_N, IEEE)
    else:
        _suffix_part(q_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr, sk_ptr, sv_ptr, o_ptr, lse_ptr, t,
                     pid - splits * row_tiles, head, splits,
                     stride_q, stride_kn, stride_vn, stride_cb, stride_ct, stride_sb, stride_sh, stride_sp,
                     stride_oh, stride_os, stride_or, stride_lh, stride_ls, scale_log2,
                     GROUP, HEAD_DIM, BLOCK_G, BLOCK_W, IEEE)


@triton.jit
def merge_kernel(o_ptr, lse_ptr, out_ptr, stride_oh, stride_os, stride_or, stride_lh, stride_ls, stride_ob,
                 parts, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    r = tl.program_id(0)  # folded row over all prompts: sample r // G, head h*G + r % G
    head = tl.program_id(1)
    sidx = tl.arange(0, BLOCK_S)
    dd = tl.arange(0, HEAD_DIM)
    lse_row = lse_ptr + head * stride_lh + r
    lse = tl.load(lse_row + sidx * stride_ls, mask=sidx < parts, other=float("-inf"))
    top = tl.max(lse, 0)  # finite: the suffix partial always holds the current token
    total = tl.sum(tl.exp(lse - top), 0)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    o_row = o_ptr + head * stride_oh + r * stride_or
    for c in range(0, parts, BLOCK_C):
        s = c + tl.arange(0, BLOCK_C)
        ok = s < parts
        w = tl.exp(tl.load(lse_row + s * stride_ls, mask=ok, other=float("-inf")) - top)
        o = tl.load(o_row + s[:, None] * stride_os + dd[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(o * w[:, None], 0)
    out = acc / total
    tl.store(out_ptr + (r // GROUP) * stride_ob + (head * GROUP + r % GROUP) * HEAD_DIM + dd,
             out.to(out_ptr.dtype.element_ty))


@dataclass(frozen=True)
class AttentionPlan:
    """Static launch shape of a decode batch's attention (fixed while the batch decodes, so the
    captured graph stays valid): every prompt gets ``splits`` prefix splits of its own length."""

    n: int
    group: int
    kv_heads: int
    head_dim: int
    splits: int
    split_lens: tuple[int, ...]  # per prompt, a multiple of block_n
    prefix_lens: tuple[int, ...]
    block_r: int
    row_tiles: int
    block_n: int


def attention_plan(prefix_lens: list[int], n: int, num_heads: int, kv_heads: int, head_dim: int,
                   device: torch.device, block_n: int = 64) -> AttentionPlan:
    """Splits sized so one prompt's prefix programs fill the GPU about once (the longest prefix
    decides the count; shorter prompts get shorter splits, trailing ones may be empty)."""
    group = num_heads // kv_heads
    rows = n * group
    block_r = min(128, max(16, triton.next_power_of_2(rows)))
    row_tiles = triton.cdiv(rows, block_r)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    longest = max(prefix_lens)
    splits = max(1, min(triton.cdiv(longest, block_n), triton.cdiv(sms, kv_heads * row_tiles)))
    split_lens = tuple(max(block_n, triton.cdiv(triton.cdiv(p, splits), block_n) * block_n) for p in prefix_lens)
    return AttentionPlan(n, group, kv_heads, head_dim, splits, split_lens, tuple(prefix_lens), block_r, row_tiles,
                         block_n)


def decode_attention(plan: AttentionPlan, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, step: torch.Tensor,
                     prefixes: list[tuple[torch.Tensor, torch.Tensor]], suffix_k: torch.Tensor,
                     suffix_v: torch.Tensor, scale: float, block_w: int = 64) -> torch.Tensor:
    """Cascade attention of one decode token per row, rotary and suffix-cache write included.

    q [B, Hq*D], k_new/v_new [B, Hkv*D]: this step's projections before rotary (row-strided
    views of one packed projection are fine; the last dim must be contiguous). cos/sin [B, T, D]
    per row and response index; ``step`` (0-d int tensor) is this token's index t. prefixes[g]
    = (k, v) [Hkv, P_g, D] of prompt g (rows [g*n, (g+1)*n)); suffix_k/v [B, Hkv, C, D] hold
    slots [0, t) and get slot t. Returns [B, Hq*D] in q's dtype (what o_proj reads)."""
    b = q.shape[0]
    hkv, dim, group, n, splits = plan.kv_heads, plan.head_dim, plan.group, plan.n, plan.splits
    for x in (q, k_new, v_new, cos, sin, suffix_k, suffix_v):
        assert x.stride(-1) == 1, "decode_attention needs a contiguous last dim"
    assert suffix_k.stride() == suffix_v.stride() and prefixes[0][0].shape[-1] == dim
    rows = n * group
    parts = splits + 1  # the prefix splits, then the suffix
    out = torch.empty(hkv, parts, b * group, dim, device=q.device, dtype=q.dtype)
    lse = torch.empty(hkv, parts, b * group, device=q.device, dtype=torch.float32)
    ieee = q.dtype == torch.float32
    block_g = max(16, triton.next_power_of_2(group))
    for g, (pk, pv) in enumerate(prefixes):
        lo, hi = g * n, (g + 1) * n
        o_g, l_g = out[:, :, lo * group:], lse[:, :, lo * group:]
        decode_attention_kernel[(splits * plan.row_tiles + n, hkv)](
            q[lo:hi], k_new[lo:hi], v_new[lo:hi], cos[lo:hi], sin[lo:hi], step,
            pk, pv, suffix_k[lo:hi], suffix_v[lo:hi], o_g, l_g,
            q.stride(0), k_new.stride(0), v_new.stride(0), cos.stride(0), cos.stride(1),
            pk.stride(0), pk.stride(1), pv.stride(0), pv.stride(1),
            suffix_k.stride(0), suffix_k.stride(1), suffix_k.stride(2),
            out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
            pk.shape[1], plan.split_lens[g], splits, plan.row_tiles, rows, scale * LOG2E,
            GROUP=group, HEAD_DIM=dim, BLOCK_R=plan.block_r, BLOCK_N=plan.block_n, BLOCK_G=block_g,
            BLOCK_W=block_w, IEEE=ieee, num_warps=4, num_stages=3,
        )
    merged = torch.empty(b, group * hkv * dim, device=q.device, dtype=q.dtype)
    merge_kernel[(b * group, hkv)](
        out, lse, merged, out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        merged.stride(0), parts, GROUP=group, HEAD_DIM=dim, BLOCK_S=triton.next_power_of_2(parts), BLOCK_C=16,
        num_warps=4,
    )
    return merged
