"""Triton kernel of the decode step (GPU only; imported lazily, so CPU installs need no Triton).

``prefix_attention_kernel`` is the cascade's prefix part as split-KV "flash decoding": one
program per (KV split, KV head, row tile) streams its slice of the shared prefix KV once and
attends all the group's folded queries (n samples x GQA group, gathered by index arithmetic, no
copy) with an online softmax, writing a normalised partial output and its log-sum-exp. The
partials over splits merge afterwards (``attention.merge_partials``), together with the suffix.

(A weight-streaming Triton GEMM for the few decode rows was tried and measured slower than cuBLAS
on every decoder shape of the 3B model on an H100: notes/rollout.md.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def prefix_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    stride_qn, stride_qh, stride_kh, stride_kp, stride_vh, stride_vp,
    stride_oh, stride_os, stride_or, stride_lh, stride_ls,
    prefix_len, split_len, rows, scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    head = tl.program_id(1)
    r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)  # folded row: sample r // G, head h*G + r % G
    d = tl.arange(0, HEAD_DIM)
    row_ok = r < rows
    q_off = (r // GROUP) * stride_qn + (head * GROUP + r % GROUP) * stride_qh
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)

    start = split * split_len
    end = tl.minimum(start + split_len, prefix_len)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    k_base = k_ptr + head * stride_kh
    v_base = v_ptr + head * stride_vh
    for i in range(0, split_len // BLOCK_N):  # split_len is a multiple of BLOCK_N; the last split masks
        n = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = n < end
        k = tl.load(k_base + n[:, None] * stride_kp + d[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # base-2 scores [BLOCK_R, BLOCK_N]
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * stride_vp + d[None, :], mask=key_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out = acc / l[:, None]
    o_off = head * stride_oh + split * stride_os + r[:, None] * stride_or + d[None, :]
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse = (m + tl.log2(l)) * LN2  # natural log, like flash attention's
    tl.store(lse_ptr + head * stride_lh + split * stride_ls + r, lse, mask=row_ok)



def prefix_partials_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                           block_n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """q [n, Hq, D] (last dim contiguous) over k/v [Hkv, P, D]: partials (out [Hkv, S, n*G, D] in
    q's dtype, lse [Hkv, S, n*G] fp32) over S splits sized so the programs fill the GPU once."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    n, hq, dim = q.shape
    hkv, prefix_len = k.shape[0], k.shape[1]
    group = hq // hkv
    rows = n * group
    block_r = min(128, max(16, triton.next_power_of_2(rows)))
    row_tiles = triton.cdiv(rows, block_r)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    splits = max(1, min(triton.cdiv(prefix_len, block_n), triton.cdiv(sms, hkv * row_tiles)))
    split_len = triton.cdiv(triton.cdiv(prefix_len, splits), block_n) * block_n
    splits = triton.cdiv(prefix_len, split_len)
    out = torch.empty(hkv, splits, rows, dim, device=q.device, dtype=q.dtype)
    lse = torch.empty(hkv, splits, rows, device=q.device, dtype=torch.float32)
    prefix_attention_kernel[(splits, hkv, row_tiles)](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        prefix_len, split_len, rows, scale * LOG2E,
        GROUP=group, HEAD_DIM=dim, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4, num_stages=3,
    )
    return out, lse


def prefix_partials(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``attention.prefix_partials`` with the Triton kernel for 16-bit inputs (fp32 keeps exact math)."""
    if q.dtype not in (torch.bfloat16, torch.float16):
        from longrl.rollout.attention import prefix_partials as reference

        return reference(q, k, v, scale)
    return [prefix_partials_triton(q, k, v, scale)]
