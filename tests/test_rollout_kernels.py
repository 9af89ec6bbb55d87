"""The Triton decode-attention kernels, run by Triton's CPU interpreter (skipped without Triton)."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels are defined: they run interpreted
triton = pytest.importorskip("triton")

from longrl.models.decoder import rotate_half  # noqa: E402
from longrl.rollout import RolloutConfig, SamplingParams, engine, generate, kernels  # noqa: E402
from longrl.rollout.attention import cascade_attention  # noqa: E402
from longrl.rollout.ops import DecodeOps  # noqa: E402
from longrl.rollout.sampling import SamplingParams as SP, hashed_vocab, row_keys, sample_tokens  # noqa: E402


@pytest.fixture
def eight_sms(monkeypatch):
    if DEVICE == "cpu":  # the planner sizes splits by the SM count
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"multi_processor_count": 8}))


def rotary(x, cos, sin):
    return x * cos + rotate_half(x) * sin


@pytest.mark.parametrize(
    "n,hq,hkv,dim,prefix_lens,step",
    [
        (3, 8, 2, 32, [300], 5),
        (2, 16, 2, 64, [129, 40], 0),
        (8, 4, 2, 32, [100, 700, 65], 70),
        (2, 6, 2, 32, [90], 3),
    ],
)
def test_fused_decode_attention_equals_cascade_reference(eight_sms, n, hq, hkv, dim, prefix_lens, step):
    g = torch.Generator().manual_seed(step)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE)  # noqa: E731
    prompts, capacity, steps = len(prefix_lens), 80, 90
    b = n * prompts
    plan = kernels.attention_plan(prefix_lens, n, hq, hkv, dim, torch.device(DEVICE), block_n=32, programs=8)
    assert plan.splits > 1
    # one packed projection output, as the GPU path passes it: q, k, v are row-strided views
    qkv = rnd(b, (hq + 2 * hkv) * dim)
    q, k, v = qkv.split([hq * dim, hkv * dim, hkv * dim], dim=1)
    angles = rnd(prompts, steps, dim // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    prefixes = [(rnd(hkv, p, dim), rnd(hkv, p, dim)) for p in prefix_lens]
    sk, sv = rnd(b, hkv, capacity, dim), rnd(b, hkv, capacity, dim)
    sk_ref, sv_ref = sk.clone(), sv.clone()
    t = torch.tensor(step, device=DEVICE)

    out = kernels.decode_attention(plan, q, k, v, cos, sin, t, prefixes, sk, sv, 0.2, block_w=16)

    c, s = (x[:, step, None].repeat_interleave(n, 0) for x in (cos, sin))  # [B, 1, D]
    q_rot = rotary(q.reshape(b, hq, dim), c, s)
    sk_ref[:, :, step] = rotary(k.reshape(b, hkv, dim), c, s)
    sv_ref[:, :, step] = v.reshape(b, hkv, dim)
    ref = cascade_attention(q_rot, prefixes, n, sk_ref, sv_ref, t + 1, 0.2).flatten(1)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert torch.allclose(sk, sk_ref, atol=1e-6) and torch.equal(sv, sv_ref)  # slot t written, others kept


def test_generate_with_fused_kernels_and_packed_weights(monkeypatch, eight_sms):
    """The GPU decode path end to end on the CPU interpreter: packed q/k/v and gate/up GEMMs, the
    fused attention and sampling kernels: same tokens, log-probs within 1e-5, as the eager path."""
    from longrl.models.adapter import build_prompt, load_model
    from longrl.models.config import ModelConfig
    from longrl.models.inputs import VisionInputs

    model, tok = load_model(ModelConfig(dtype="float32"), DEVICE, tokenizer_texts=["a red square moves."] * 4, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = []
    for frames in (4, 2):
        pixels = torch.randn(frames * 16, 3 * 2 * 14 * 14, generator=g)
        video = VisionInputs(pixels, torch.tensor([[frames, 4, 4]]), 1.0)
        prompts.append(
            build_prompt(
                model, tok, [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}], video
            )
        )
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return kernels.decode_attention(*args, **kwargs)

    fused_ops = DecodeOps(False, True, pack=True)
    fused_ops.kernels = type(
        "K",
        (),
        {
            "decode_attention": staticmethod(counted),
            "sample": staticmethod(kernels.sample),
            "attention_plan": staticmethod(kernels.attention_plan),
        },
    )
    for params in (
        SamplingParams(n=2, greedy=True, max_new_tokens=10),  # the sampling kernels
        SamplingParams(n=3, temperature=0.9, max_new_tokens=10, seed=4),
        SamplingParams(n=3, temperature=0.9, top_k=20, max_new_tokens=10, seed=4),
    ):  # torch sampler
        plain = generate(model, prompts, params)
        with monkeypatch.context() as m:
            fused_ops.layers = None
            m.setattr(engine, "decode_ops", lambda config, device: fused_ops)
            # eager steps (no CUDA graphs on a GPU): every step's kernel calls pass through ``counted``
            fused = generate(model, prompts, params, config=RolloutConfig(finish_check_interval=1, cuda_graphs=False))
        assert len(calls) == 9 * 4 and fused_ops.packed_bytes() > 0  # 9 steps x 4 layers, batch of 2 prompts
        calls.clear()
        for ga, gb in zip(plain, fused):
            for a, b in zip(ga, gb):
                assert a.token_ids == b.token_ids
                assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5


@pytest.mark.parametrize("temperature,greedy", [(1.0, False), (0.7, False), (1.0, True)])
def test_sampling_kernel_equals_torch_sampler(temperature, greedy):
    g = torch.Generator().manual_seed(1)
    rows, vocab = 5, 3000
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(DEVICE)
    logits[1, 17] = logits[1, 2500] = 50.0  # an exact tie: the first index wins, as in torch.argmax
    keys, vh = row_keys(9, torch.arange(rows, device=DEVICE)), hashed_vocab(vocab, torch.device(DEVICE))
    for step in (0, 3, 2**33 + 5):
        t = torch.tensor(step, device=DEVICE)
        ref_tok, ref_lp = sample_tokens(logits, SP(temperature=temperature, greedy=greedy), keys, t, vh)
        tok, lp = kernels.sample(logits, keys, t, vh, temperature, greedy, chunks=4, block=256)
        assert torch.equal(tok, ref_tok) and (lp - ref_lp).abs().max().item() < 1e-5
        if greedy:
            assert tok[1].item() == 17
