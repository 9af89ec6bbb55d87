"""The Triton prefix-attention kernel, run by Triton's CPU interpreter (skipped without Triton)."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels are defined: they run interpreted
triton = pytest.importorskip("triton")

from longrl.rollout import kernels  # noqa: E402
from longrl.rollout.attention import attention_lse_math, fold_queries, merge_partials  # noqa: E402


@pytest.mark.parametrize("n,hq,hkv,dim,prefix", [(3, 8, 2, 32, 300), (8, 16, 2, 64, 129), (20, 16, 2, 32, 100)])
def test_prefix_kernel_partials_merge_to_exact_attention(monkeypatch, n, hq, hkv, dim, prefix):
    device = DEVICE
    if device == "cpu":  # the launcher sizes splits by the SM count
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"multi_processor_count": 8}))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*s, generator=g).to(device) for s in ((n, hq, dim), (hkv, prefix, dim), (hkv, prefix, dim)))
    out, lse = kernels.prefix_partials_triton(q, k, v, 0.3, block_n=32)
    assert out.shape[:3] == lse.shape == (hkv, out.shape[1], n * hq // hkv) and out.shape[1] > 1  # several splits
    merged, merged_lse = merge_partials(out, lse, dim=1)
    ref, ref_lse = attention_lse_math(fold_queries(q, hkv), k, v, 0.3)
    assert (merged - ref).abs().max().item() < 1e-4 and (merged_lse - ref_lse).abs().max().item() < 1e-4
