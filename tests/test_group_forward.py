"""Group forward == n separate sequences: log-probs, loss and every gradient (tiny fp32 model, video)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from longrl.models.adapter import build_prompt, load_model
from longrl.models.config import ModelConfig
from longrl.models.inputs import VisionInputs
from longrl.train.group_forward import (
    GroupAttention,
    GroupPacking,
    enable_gradient_checkpointing,
    group_block_counts,
    group_block_mask,
    group_mask_mod,
    plan_checkpointing,
    resolved_layers,
)
from longrl.train.logprobs import group_logprobs, sequence_logprobs

TOL = 1e-5


def tiny_video_group(seed: int = 0):
    """Tiny fp32 Qwen2.5-VL, a prompt holding an 8-frame video (4 temporal groups x 2x2 merged
    patches = 16 video tokens), and 4 ragged responses (one of a single token). A fresh copy each
    call (tests change flags and grads), built once per seed."""
    model, prompt, responses = _tiny_video_group(seed)
    return copy.deepcopy(model), copy.deepcopy(prompt), [r.clone() for r in responses]


@functools.cache
def _tiny_video_group(seed: int):
    cfg = ModelConfig(dtype="float32", train_vision=True)
    texts = ["a red square enters at the top left, then the blue circle moves right."] * 8
    model, tok = load_model(cfg, tokenizer_texts=texts, seed=seed)
    g = torch.Generator().manual_seed(seed)
    vision = VisionInputs(torch.randn(4 * 4 * 4, 3 * 2 * 14 * 14, generator=g), torch.tensor([[4, 4, 4]]), 1.0)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which moved first?"}]}]
    prompt = build_prompt(model, tok, messages, vision)
    vocab = model.config.text_config.vocab_size
    responses = [torch.randint(0, vocab, (n,), generator=g) for n in (6, 11, 1, 8)]
    return model, prompt, responses


def weighted_loss(logprobs: list[torch.Tensor], seed: int = 1) -> torch.Tensor:
    """A fixed random per-token weighting, so every log-prob's gradient matters."""
    g = torch.Generator().manual_seed(seed)
    return sum((torch.randn(lp.shape, generator=g) * lp).sum() for lp in logprobs)


def grads(model) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys() and len(a) > 0
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= TOL, f"max grad difference {worst:.3g}"


@pytest.mark.parametrize("train_vision", [False, True])
def test_group_equals_separate_sequences(train_vision):
    model, prompt, responses = tiny_video_group()
    assert not torch.equal(prompt.position_ids[0], prompt.position_ids[1])  # real 3-D M-RoPE on the video
    if not train_vision:
        model.model.visual.requires_grad_(False)

    group = group_logprobs(model, prompt, responses, train_vision=train_vision)
    group_loss = weighted_loss(group.logprobs)
    group_loss.backward()
    group_grads = grads(model)

    separate = [sequence_logprobs(model, prompt, r, train_vision=train_vision) for r in responses]
    separate_loss = weighted_loss(separate)
    separate_loss.backward()
    separate_grads = grads(model)

    for g, s, r in zip(group.logprobs, separate, responses):
        assert g.shape == r.shape and g.dtype == torch.float32
        assert (g - s).abs().max().item() <= TOL
    assert abs(group_loss.item() - separate_loss.item()) <= TOL
    assert_same_grads(group_grads, separate_grads)
    assert any(k.startswith("model.visual") for k in group_grads) == train_vision
    # log-probs are real probabilities of the tokens, not a constant
    assert all((lp < 0).all() for lp in group.logprobs)


@pytest.mark.parametrize("checkpointed", [None, 2])
def test_group_with_checkpointing_temperature_and_entropy(checkpointed, monkeypatch):
    model, prompt, responses = tiny_video_group(seed=3)
    enable_gradient_checkpointing(model, checkpointed)
    flags = [layer.gradient_checkpointing for layer in model.model.language_model.layers]
    assert flags == ([True] * 4 if checkpointed is None else [True, True, False, False])
    model.model.visual.requires_grad_(False)
    model.train()  # transformers checkpoints layers only in training mode
    calls = []
    attend = GroupAttention.attend
    monkeypatch.setattr(GroupAttention, "attend", lambda self, *a: calls.append(1) or attend(self, *a))

    group = group_logprobs(model, prompt, responses, temperature=0.7, with_entropy=True, chunk_tokens=5)
    assert len(calls) == 4
    (weighted_loss(group.logprobs) + weighted_loss(group.entropy, seed=2)).backward()
    assert len(calls) == 4 + (4 if checkpointed is None else 2)  # checkpointed layers re-ran in backward
    group_grads = grads(model)

    separate = [sequence_logprobs(model, prompt, r, temperature=0.7, with_entropy=True) for r in responses]
    (weighted_loss([s[0] for s in separate]) + weighted_loss([s[1] for s in separate], seed=2)).backward()
    assert_same_grads(group_grads, grads(model))
    for g, (_, s_ent) in zip(group.entropy, separate):
        assert (g - s_ent).abs().max().item() <= TOL and (g > 0).all()


def _dense_flex(query, key, value, block_mask, scale, enable_gqa):
    """flex_attention's semantics via its mask_mod and SDPA: CPU has no flex backward, and this
    checks longrl's plumbing around the kernel (the block mask itself is tested above)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    q_idx, kv_idx = torch.meshgrid(torch.arange(q_len), torch.arange(kv_len), indexing="ij")
    mask = block_mask.mask_mod(0, 0, q_idx, kv_idx)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)


@pytest.mark.parametrize("backend", ["split", "hybrid"])
def test_other_backends_equal_dense(backend, monkeypatch):
    import longrl.train.group_forward as gf

    monkeypatch.setattr(gf, "_flex_attention", lambda: _dense_flex)
    model, prompt, responses = tiny_video_group(seed=2)
    model.model.visual.requires_grad_(False)
    dense = group_logprobs(model, prompt, responses, backend="dense").logprobs
    weighted_loss(dense).backward()
    dense_grads = grads(model)
    other = group_logprobs(model, prompt, responses, backend=backend).logprobs
    weighted_loss(other).backward()
    assert_same_grads(grads(model), dense_grads)
    assert max((a - b).abs().max().item() for a, b in zip(dense, other)) <= TOL


def test_packing_positions_and_predictors():
    packing = GroupPacking(prefix_len=4, response_lens=[2, 3])
    assert packing.total_len == 9 and packing.response_starts == [4, 6]
    assert packing.segment_ids().tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    # token 0 of each response is predicted by the last prefix position (3)
    assert packing.predictor_index().tolist() == [3, 4, 3, 6, 7]
    mask = packing.dense_mask().int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0, 0, 0],  # r1 token 0: prefix + itself
            [1, 1, 1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 1, 0, 0],  # r2 token 0: prefix + itself, not r1
            [1, 1, 1, 1, 0, 0, 1, 1, 0],
            [1, 1, 1, 1, 0, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("prefix,lens,block", [(37, [5, 9, 1, 20], 8), (16, [16, 16], 8), (50, [3] * 7, 16)])
@pytest.mark.parametrize("from_prefix_end", [False, True])
def test_block_counts_match_dense_mask(prefix, lens, block, from_prefix_end):
    packing = GroupPacking(prefix, lens)
    q_start = prefix if from_prefix_end else 0  # the hybrid backend's query rows: responses only
    allowed, total = group_block_counts(packing, block, q_start=q_start)
    T = packing.total_len
    nk, nq = -(-T // block), -(-(T - q_start) // block)

    def blocks(rows):  # [T - q_start, T] -> per-block sums
        return F.pad(rows, (0, nk * block - T, 0, nq * block - (T - q_start))).view(nq, block, nk, block).sum((1, 3))

    assert torch.equal(allowed, blocks(packing.dense_mask().int()[q_start:]))
    assert torch.equal(total, blocks(torch.ones(T - q_start, T, dtype=torch.int)))


def test_flex_block_mask_lists_exactly_the_visible_blocks():
    packing = GroupPacking(40, [7, 12, 1, 30])
    allowed, total = group_block_counts(packing, 8)
    block_mask = group_block_mask(packing, "cpu", block=8)
    listed = block_mask.to_dense()[0, 0].bool()  # partial and full blocks
    assert torch.equal(listed, allowed > 0)
    assert listed.sum() < torch.ones_like(listed).tril().sum()  # sparser than causal: responses skip each other
    full = torch.zeros_like(listed)
    for row in range(full.shape[0]):
        idx = block_mask.full_kv_indices[0, 0, row, : block_mask.full_kv_num_blocks[0, 0, row]]
        full[row, idx.long()] = True
    assert torch.equal(full, allowed == total)


def test_flex_mask_mod_matches_dense():
    """The mask_mod equals the dense mask, and flex_attention's eager reference (CPU) equals SDPA."""
    from torch.nn.attention.flex_attention import flex_attention

    packing = GroupPacking(40, [7, 12, 1, 30])
    seg = packing.segment_ids()
    T = packing.total_len
    q_idx, kv_idx = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(group_mask_mod(seg)(0, 0, q_idx, kv_idx), packing.dense_mask())
    assert torch.equal(
        group_mask_mod(seg, q_start=40)(0, 0, q_idx[: T - 40], kv_idx[: T - 40]), packing.dense_mask()[40:]
    )

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, T, 16, generator=g)
    k, v = torch.randn(2, 1, 2, T, 16, generator=g)
    block_mask = group_block_mask(packing, "cpu", block=16)
    got = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.dense_mask(), enable_gqa=True)
    assert (got - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("checkpointed", [False, True])
def test_layer_implementations_agree(checkpointed, monkeypatch):
    """longrl's layer functions (eager, and compiled through AOTAutograd as on the GPU, where
    inductor replaces aot_eager) equal transformers' layers in log-probs and every gradient, also
    under gradient checkpointing (the compiled functions re-run in backward)."""
    import longrl.models.decoder as decoder

    monkeypatch.setattr(decoder, "_compile", lambda fn: torch.compile(fn, backend="aot_eager", dynamic=True))
    monkeypatch.setattr(decoder, "_compiled_layer_fns", None)
    model, prompt, responses = tiny_video_group(seed=4)
    model.model.visual.requires_grad_(False)
    if checkpointed:
        enable_gradient_checkpointing(model, 3)
        model.train()
    results = {}
    for layers in ("hf", "eager", "compiled"):
        out = group_logprobs(model, prompt, responses, layers=layers)
        assert out.info == {"layers": layers, "checkpointed_layers": 3 if checkpointed else 0}
        weighted_loss(out.logprobs).backward()
        results[layers] = (out.logprobs, grads(model))
    ref_logp, ref_grads = results["hf"]
    for layers in ("eager", "compiled"):
        logp, g = results[layers]
        assert max((a - b).abs().max().item() for a, b in zip(logp, ref_logp)) <= TOL
        assert_same_grads(g, ref_grads)
    assert resolved_layers("auto", torch.device("cpu"), model.model.language_model) == "eager"
    model.model.language_model.config.hidden_act = "gelu"  # not the SwiGLU the functions implement
    assert resolved_layers("compiled", torch.device("cpu"), model.model.language_model) == "hf"


def test_plan_checkpointing_keeps_what_fits():
    flagged = [True] * 6
    # kept layer 10 bytes, checkpointed 1: need = keep*10 + (6-keep)*1 + 10 (backward's room)
    assert plan_checkpointing(flagged, 10, 1, 10**6) == [False] * 6  # everything fits: recompute nothing
    assert plan_checkpointing(flagged, 10, 1, 6 + 10 + 9 * 3) == [True] * 3 + [False] * 3
    assert plan_checkpointing(flagged, 10, 1, 6 + 10 + 9 * 3 - 1) == [True] * 4 + [False] * 2
    assert plan_checkpointing(flagged, 10, 1, 0) == [True] * 6  # nothing fits: checkpoint all flagged
    # unflagged layers always keep theirs, and count against the room
    assert plan_checkpointing([True, True, False], 10, 1, 2 + 10 + 10 + 9) == [True, False, False]
    assert plan_checkpointing([False, False], 10, 1, 0) == [False, False]
