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
def _rotated(ptr, off, mask, cos, sin, HEAD_DIM: tl.constexpr):
    """Rotate-half rotary of rows ``ptr + off`` (fp32): x * cos + rotate_half(x) * sin, where
    rotate_half(x) = [-x_hi, x_lo] is read as a second, half-swapped load of the same row (so
    the result is one full-width tile and the scores are one dot over the whole head dim).
    cos/sin [D] (fp32): every row of a program is one prompt's, at one position."""
    dd = tl.arange(0, HEAD_DIM)
    swap = (dd + HEAD_DIM // 2) % HEAD_DIM
    sin = tl.where(dd < HEAD_DIM // 2, -sin, sin)
    x = tl.load(ptr + off[:, None] + dd[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    x_sw = tl.load(ptr + off[:, None] + swap[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    return x * cos[None, :] + x_sw * sin[None, :]


@triton.jit
def _online_block(q, k_ptrs, v_ptrs, key_ok, m, l, acc, scale_log2, IEEE: tl.constexpr):
    """One key block of an online softmax: scores of q against the keys at ``k_ptrs`` (masked by
    ``key_ok``), then the running max ``m``, sum ``l`` and output ``acc`` updated with the values
    at ``v_ptrs``. Base-2 exponentials (``scale_log2`` folds in log2(e))."""
    k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
    s = _dot(q, tl.trans(k), IEEE) * scale_log2
    s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l, acc


@triton.jit
def _prefix_part(
    q_ptr,
    cos_ptr,
    sin_ptr,
    pk_ptr,
    pv_ptr,
    o_ptr,
    lse_ptr,
    t,
    split,
    tile,
    head,
    stride_q,
    stride_ct,
    stride_pkh,
    stride_pkp,
    stride_pvh,
    stride_pvp,
    stride_oh,
    stride_os,
    stride_or,
    stride_lh,
    stride_ls,
    stride_lr,
    prefix_len,
    split_len,
    rows,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One KV split of the shared prefix for a tile of folded rows -> one partial."""
    dd = tl.arange(0, HEAD_DIM)
    r = tile * BLOCK_R + tl.arange(0, BLOCK_R)  # folded row: sample r // G, head h*G + r % G
    row_ok = r < rows
    sample = r // GROUP
    q_off = sample * stride_q + (head * GROUP + r % GROUP) * HEAD_DIM
    cos = tl.load(cos_ptr + t * stride_ct + dd).to(tl.float32)
    sin = tl.load(sin_ptr + t * stride_ct + dd).to(tl.float32)
    q = _rotated(q_ptr, q_off, row_ok, cos, sin, HEAD_DIM).to(q_ptr.dtype.element_ty)

    start = split * split_len
    end = tl.minimum(start + split_len, prefix_len)
    # m starts finite: a block with no valid key (past a shorter prompt's end: all prompts of a
    # batch share the split count) then leaves m, l and acc as they were instead of making NaNs;
    # an all-empty split ends with l = 0 and writes an empty partial (lse = -inf).
    m = tl.full([BLOCK_R], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    k_base = pk_ptr + head * stride_pkh
    v_base = pv_ptr + head * stride_pvh
    # A uniform trip count (split_len is a multiple of BLOCK_N): a bound computed from the split's
    # end made the compiler spill (255 registers + 112 B of stack at 4 warps, vs 8 B).
    for i in range(0, split_len // BLOCK_N):
        n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        m, l, acc = _online_block(
            q,
            k_base + n[:, None] * stride_pkp + dd[None, :],
            v_base + n[:, None] * stride_pvp + dd[None, :],
            n < end,
            m,
            l,
            acc,
            scale_log2,
            IEEE,
        )
    has = l > 0
    out = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, (m + tl.log2(tl.where(has, l, 1.0))) * LN2, float("-inf"))  # natural log, like flash's
    o_off = head * stride_oh + split * stride_os + r[:, None] * stride_or + dd[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + head * stride_lh + split * stride_ls + r * stride_lr, lse, mask=row_ok)


@triton.jit
def _suffix_part(
    q_ptr,
    kn_ptr,
    vn_ptr,
    cos_ptr,
    sin_ptr,
    sk_ptr,
    sv_ptr,
    o_ptr,
    lse_ptr,
    t,
    sample,
    head,
    part,
    stride_q,
    stride_kn,
    stride_vn,
    stride_ct,
    stride_sb,
    stride_sh,
    stride_sp,
    stride_oh,
    stride_os,
    stride_or,
    stride_lh,
    stride_ls,
    stride_lr,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_W: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One sample's G query heads over its own response KV -> partial ``part``; writes this
    step's rotated key and value into the suffix cache at slot t."""
    dd = tl.arange(0, HEAD_DIM)
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    cos = tl.load(cos_ptr + t * stride_ct + dd).to(tl.float32)
    sin = tl.load(sin_ptr + t * stride_ct + dd).to(tl.float32)
    q = _rotated(q_ptr, sample * stride_q + (head * GROUP + g) * HEAD_DIM, g_ok, cos, sin, HEAD_DIM).to(
        q_ptr.dtype.element_ty
    )
    # this step's key (rotated) and value, loaded into every row of the tile (the same address:
    # cache hits) so they combine with q row by row; row 0 writes them into the cache at slot t
    kv_rows = 0 * g[:, None] + dd[None, :]
    k = _rotated(kn_ptr, sample * stride_kn + head * HEAD_DIM + 0 * g, g >= 0, cos, sin, HEAD_DIM).to(
        sk_ptr.dtype.element_ty
    )
    v_new = tl.load(vn_ptr + sample * stride_vn + head * HEAD_DIM + kv_rows)
    s_off = sample * stride_sb + head * stride_sh
    first = (g == 0)[:, None]
    tl.store(sk_ptr + s_off + t * stride_sp + kv_rows, k, mask=first)
    tl.store(sv_ptr + s_off + t * stride_sp + kv_rows, v_new.to(sv_ptr.dtype.element_ty), mask=first)

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for w0 in range(0, t, BLOCK_W):  # earlier response tokens (none at step 0)
        n = w0 + tl.arange(0, BLOCK_W)
        m, l, acc = _online_block(
            q,
            sk_ptr + s_off + n[:, None] * stride_sp + dd[None, :],
            sv_ptr + s_off + n[:, None] * stride_sp + dd[None, :],
            n < t,
            m,
            l,
            acc,
            scale_log2,
            IEEE,
        )
    # the current token (always present, so every row ends with l > 0)
    s_cur = tl.sum(q.to(tl.float32) * k.to(tl.float32), 1) * scale_log2
    m_new = tl.maximum(m, s_cur)
    alpha = tl.exp2(m - m_new)
    p_cur = tl.exp2(s_cur - m_new)
    l = l * alpha + p_cur
    acc = acc * alpha[:, None] + p_cur[:, None] * v_new.to(tl.float32)
    out = acc / l[:, None]
    lse = (m_new + tl.log2(l)) * LN2
    r = sample * GROUP + g  # folded rows of this sample's heads
    o_off = head * stride_oh + part * stride_os + r[:, None] * stride_or + dd[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])
    tl.store(lse_ptr + head * stride_lh + part * stride_ls + r * stride_lr, lse, mask=g_ok)


@triton.jit
def decode_attention_kernel(
    q_ptr,
    kn_ptr,
    vn_ptr,
    cos_ptr,
    sin_ptr,
    step_ptr,
    pk_ptr,
    pv_ptr,
    sk_ptr,
    sv_ptr,
    o_ptr,
    lse_ptr,
    stride_q,
    stride_kn,
    stride_vn,
    stride_ct,
    stride_pkh,
    stride_pkp,
    stride_pvh,
    stride_pvp,
    stride_sb,
    stride_sh,
    stride_sp,
    stride_oh,
    stride_os,
    stride_or,
    stride_lh,
    stride_ls,
    stride_lr,
    prefix_len,
    split_len,
    splits,
    row_tiles,
    rows,
    scale_log2,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_W: tl.constexpr,
    IEEE: tl.constexpr,
):
    # grid: (splits * row_tiles prefix programs + n suffix programs, KV heads). The two parts
    # are separate functions: Triton requires names set in both branches of an `if` to agree in type.
    pid = tl.program_id(0)
    head = tl.program_id(1)
    t = tl.load(step_ptr).to(tl.int32)  # this step's suffix slot; slots [0, t) hold earlier tokens
    if pid < splits * row_tiles:
        _prefix_part(
            q_ptr,
            cos_ptr,
            sin_ptr,
            pk_ptr,
            pv_ptr,
            o_ptr,
            lse_ptr,
            t,
            pid % splits,
            pid // splits,
            head,
            stride_q,
            stride_ct,
            stride_pkh,
            stride_pkp,
            stride_pvh,
            stride_pvp,
            stride_oh,
            stride_os,
            stride_or,
            stride_lh,
            stride_ls,
            stride_lr,
            prefix_len,
            split_len,
            rows,
            scale_log2,
            GROUP,
            HEAD_DIM,
            BLOCK_R,
            BLOCK_N,
            IEEE,
        )
    else:
        _suffix_part(
            q_ptr,
            kn_ptr,
            vn_ptr,
            cos_ptr,
            sin_ptr,
            sk_ptr,
            sv_ptr,
            o_ptr,
            lse_ptr,
            t,
            pid - splits * row_tiles,
            head,
            splits,
            stride_q,
            stride_kn,
            stride_vn,
            stride_ct,
            stride_sb,
            stride_sh,
            stride_sp,
            stride_oh,
            stride_os,
            stride_or,
            stride_lh,
            stride_ls,
            stride_lr,
            scale_log2,
            GROUP,
            HEAD_DIM,
            BLOCK_G,
            BLOCK_W,
            IEEE,
        )


@triton.jit
def merge_kernel(
    o_ptr,
    lse_ptr,
    out_ptr,
    stride_oh,
    stride_or,
    stride_lh,
    stride_lr,
    stride_ob,
    parts,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # A row's partials are contiguous ([parts, D] and [parts]): all loads go out at once (a
    # chunked loop was latency-bound, 6 us per layer for 2 MB).
    r = tl.program_id(0)  # folded row over all prompts: sample r // G, head h*G + r % G
    head = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    dd = tl.arange(0, HEAD_DIM)
    ok = s < parts
    lse = tl.load(lse_ptr + head * stride_lh + r * stride_lr + s, mask=ok, other=float("-inf"))
    o = tl.load(
        o_ptr + head * stride_oh + r * stride_or + s[:, None] * HEAD_DIM + dd[None, :], mask=ok[:, None], other=0.0
    ).to(tl.float32)
    w = tl.exp(lse - tl.max(lse, 0))  # the max is finite: the suffix partial holds the current token
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(
        out_ptr + (r // GROUP) * stride_ob + (head * GROUP + r % GROUP) * HEAD_DIM + dd,
        out.to(out_ptr.dtype.element_ty),
    )


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
    num_warps: int


def attention_plan(
    prefix_lens: list[int],
    n: int,
    num_heads: int,
    kv_heads: int,
    head_dim: int,
    device: torch.device,
    block_n: int = 64,
    num_warps: int = 4,
    programs: int | None = None,
) -> AttentionPlan:
    """Splits sized so one prompt's prefix programs number about ``programs`` (the longest
    prefix decides the count; shorter prompts get shorter splits, trailing ones may be empty).

    Default: 4 warps per program and SMs - n*Hkv prefix programs, so prefix and suffix programs
    run in one wave (graph-timed on an H100: 14.5 us per layer with the merge, vs 15.0 at 8
    warps, 15.6 at one prefix program per SM; notes/rollout.md)."""
    group = num_heads // kv_heads
    rows = n * group
    block_r = min(128, max(16, triton.next_power_of_2(rows)))
    row_tiles = triton.cdiv(rows, block_r)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    longest = max(prefix_lens)
    # (at most 255: the merge kernel takes a row's splits + the suffix in one 256-wide tile)
    programs = programs or max(kv_heads * row_tiles, sms - n * kv_heads)
    splits = max(1, min(triton.cdiv(longest, block_n), triton.cdiv(programs, kv_heads * row_tiles), 255))
    split_lens = tuple(max(block_n, triton.cdiv(triton.cdiv(p, splits), block_n) * block_n) for p in prefix_lens)
    return AttentionPlan(
        n, group, kv_heads, head_dim, splits, split_lens, tuple(prefix_lens), block_r, row_tiles, block_n, num_warps
    )


def decode_attention(
    plan: AttentionPlan,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    step: torch.Tensor,
    prefixes: list[tuple[torch.Tensor, torch.Tensor]],
    suffix_k: torch.Tensor,
    suffix_v: torch.Tensor,
    scale: float,
    block_w: int = 64,
) -> torch.Tensor:
    """Cascade attention of one decode token per row, rotary and suffix-cache write included.

    q [B, Hq*D], k_new/v_new [B, Hkv*D]: this step's projections before rotary (row-strided
    views of one packed projection are fine; the last dim must be contiguous). cos/sin
    [prompts, T, D] per prompt and response index (a prompt's samples share positions); ``step``
    (0-d int tensor) is this token's index t. prefixes[g]
    = (k, v) [Hkv, P_g, D] of prompt g (rows [g*n, (g+1)*n)); suffix_k/v [B, Hkv, C, D] hold
    slots [0, t) and get slot t. Returns [B, Hq*D] in q's dtype (what o_proj reads)."""
    b = q.shape[0]
    hkv, dim, group, n, splits = plan.kv_heads, plan.head_dim, plan.group, plan.n, plan.splits
    for x in (q, k_new, v_new, cos, sin, suffix_k, suffix_v):
        assert x.stride(-1) == 1, "decode_attention needs a contiguous last dim"
    assert suffix_k.stride() == suffix_v.stride() and cos.stride() == sin.stride() and cos.shape[0] == len(prefixes)
    assert prefixes[0][0].shape[-1] == dim
    rows = n * group
    parts = splits + 1  # the prefix splits, then the suffix
    # partials [Hkv, folded row, part, D]: the merge reads each row's parts as one contiguous block
    out = torch.empty(hkv, b * group, parts, dim, device=q.device, dtype=q.dtype)
    lse = torch.empty(hkv, b * group, parts, device=q.device, dtype=torch.float32)
    ieee = q.dtype == torch.float32
    block_g = max(16, triton.next_power_of_2(group))
    for g, (pk, pv) in enumerate(prefixes):
        lo, hi = g * n, (g + 1) * n
        o_g, l_g = out[:, lo * group :], lse[:, lo * group :]
        decode_attention_kernel[(splits * plan.row_tiles + n, hkv)](
            q[lo:hi],
            k_new[lo:hi],
            v_new[lo:hi],
            cos[g],
            sin[g],
            step,
            pk,
            pv,
            suffix_k[lo:hi],
            suffix_v[lo:hi],
            o_g,
            l_g,
            q.stride(0),
            k_new.stride(0),
            v_new.stride(0),
            cos.stride(1),
            pk.stride(0),
            pk.stride(1),
            pv.stride(0),
            pv.stride(1),
            suffix_k.stride(0),
            suffix_k.stride(1),
            suffix_k.stride(2),
            out.stride(0),
            out.stride(2),
            out.stride(1),
            lse.stride(0),
            lse.stride(2),
            lse.stride(1),
            pk.shape[1],
            plan.split_lens[g],
            splits,
            plan.row_tiles,
            rows,
            scale * LOG2E,
            GROUP=group,
            HEAD_DIM=dim,
            BLOCK_R=plan.block_r,
            BLOCK_N=plan.block_n,
            BLOCK_G=block_g,
            BLOCK_W=block_w,
            IEEE=ieee,
            num_warps=plan.num_warps,
            num_stages=3,
        )
    merged = torch.empty(b, group * hkv * dim, device=q.device, dtype=q.dtype)
    block_s = triton.next_power_of_2(parts)
    merge_kernel[(b * group, hkv)](
        out,
        lse,
        merged,
        out.stride(0),
        out.stride(1),
        lse.stride(0),
        lse.stride(1),
        merged.stride(0),
        parts,
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_S=block_s,
        num_warps=8 if block_s * dim >= 8192 else 4,
    )
    return merged


# ---- sampling: one token per row from the LM head's logits, with its log-prob ----


@triton.jit
def _hash32(x):
    """sampling.hash32 on uint32 lanes: a wrapping 32-bit product is the int64 product mod 2^32."""
    x = ((x >> 16) ^ x) * 0x45D9F3B
    x = ((x >> 16) ^ x) * 0x45D9F3B
    return (x >> 16) ^ x


@triton.jit
def sample_partials_kernel(
    logits_ptr,
    keys_ptr,
    step_ptr,
    vhash_ptr,
    part_ptr,
    idx_ptr,
    stride_l,
    vocab,
    chunk,
    temperature,
    GREEDY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # one program per (row, vocab chunk): running log-sum-exp of logits / T, and the argmax of
    # logits / T + Gumbel noise (of the logits when greedy), first index on ties like torch.argmax
    row = tl.program_id(0)
    c = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    key = tl.load(keys_ptr + row).to(tl.uint32)
    step = tl.load(step_ptr).to(tl.uint32)
    k = _hash32(key ^ step)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK], tl.int32)
    lo = c * chunk
    for start in range(lo, tl.minimum(lo + chunk, vocab), BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < vocab
        x = tl.load(logits_ptr + row * stride_l + idx, mask=ok, other=float("-inf")).to(tl.float32)
        if GREEDY:
            y = x
        else:
            x = x / temperature
            bits = _hash32(_hash32(k ^ tl.load(vhash_ptr + idx, mask=ok, other=0).to(tl.uint32)))
            u = (bits.to(tl.float32) + 0.5) * (1.0 / 4294967296.0)
            y = x - tl.log(-tl.log(u))
        y = tl.where(ok, y, float("-inf"))
        m_new = tl.maximum(m, x)
        s = tl.where(ok, s * tl.exp(m - m_new) + tl.exp(x - m_new), s)  # (masked lanes: -inf - -inf)
        m = tl.where(ok, m_new, m)
        better = y > best  # per lane: earlier indices win ties
        best_i = tl.where(better, idx, best_i)
        best = tl.where(better, y, best)
    top = tl.max(m, 0)
    total = tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - top), 0.0), 0)
    b_val = tl.max(best, 0)
    b_idx = tl.min(tl.where(best == b_val, best_i, 2147483647), 0)  # first index among equal maxima
    out = part_ptr + (row * num_chunks + c) * 3
    tl.store(out, top)
    tl.store(out + 1, total)
    tl.store(out + 2, b_val)
    tl.store(idx_ptr + row * num_chunks + c, b_idx)


@triton.jit
def sample_combine_kernel(
    logits_ptr,
    part_ptr,
    idx_ptr,
    tokens_ptr,
    logprobs_ptr,
    stride_l,
    temperature,
    CHUNKS: tl.constexpr,
    GREEDY: tl.constexpr,
):
    row = tl.program_id(0)
    c = tl.arange(0, CHUNKS)
    p = part_ptr + (row * CHUNKS + c) * 3
    m, s, val = tl.load(p), tl.load(p + 1), tl.load(p + 2)
    idx = tl.load(idx_ptr + row * CHUNKS + c)
    top = tl.max(m, 0)
    lse = top + tl.log(tl.sum(s * tl.exp(m - top), 0))
    b_val = tl.max(val, 0)
    token = tl.min(tl.where(val == b_val, idx, 2147483647), 0)
    x = tl.load(logits_ptr + row * stride_l + token).to(tl.float32)
    if not GREEDY:
        x = x / temperature
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(logprobs_ptr + row, x - lse)


def sample(
    logits: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor,
    vocab_hash: torch.Tensor,
    temperature: float,
    greedy: bool,
    chunks: int = 32,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sampling.sample_tokens`` without top-k/top-p in two launches (the compiled version ran
    one program per row over the whole vocabulary: 90 us per step for 8 rows). Same integer
    noise as the torch sampler; tokens and log-probs [rows] (long, fp32)."""
    rows, vocab = logits.shape
    assert logits.stride(-1) == 1 and chunks == triton.next_power_of_2(chunks)
    chunk = triton.cdiv(triton.cdiv(vocab, chunks), block) * block
    parts = torch.empty(rows, chunks, 3, device=logits.device, dtype=torch.float32)
    idx = torch.empty(rows, chunks, device=logits.device, dtype=torch.int32)
    sample_partials_kernel[(rows, chunks)](
        logits,
        keys,
        step,
        vocab_hash,
        parts,
        idx,
        logits.stride(0),
        vocab,
        chunk,
        float(temperature),
        GREEDY=greedy,
        BLOCK=block,
        num_warps=4,
    )
    tokens = torch.empty(rows, device=logits.device, dtype=torch.long)
    logprobs = torch.empty(rows, device=logits.device, dtype=torch.float32)
    sample_combine_kernel[(rows,)](
        logits,
        parts,
        idx,
        tokens,
        logprobs,
        logits.stride(0),
        float(temperature),
        CHUNKS=chunks,
        GREEDY=greedy,
        num_warps=1,
    )
    return tokens, logprobs
