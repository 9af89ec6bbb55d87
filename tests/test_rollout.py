"""Rollout engine on a tiny fp32 Qwen2.5-VL with video prompts (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from longrl.models.adapter import build_prompt, decoder_forward, load_model, prompt_embeds
from longrl.models.config import ModelConfig
from longrl.models.inputs import VisionInputs
from longrl.rollout import RolloutConfig, SamplingParams, generate
from longrl.rollout.attention import (
    attention_lse_math,
    cascade_attention,
    fold_queries,
    merge_partials,
    prefill_attention,
    prefix_partials,
    split_prefill_attention,
    unfold_rows,
)
from longrl.rollout.decoder import TextDecoder
from longrl.rollout.prefill import prefill
from longrl.rollout.prompts import PromptEmbedder
from longrl.rollout.sampling import hashed_vocab, row_keys, sample_tokens


def prefix_attention(q, k, v, scale):
    """Merged prefix_partials (the engine merges them with the suffix instead): (out, lse) fp32."""
    parts = prefix_partials(q, k, v, scale)
    return merge_partials(torch.cat([o for o, _ in parts], 1), torch.cat([l for _, l in parts], 1), dim=1)


def math_with_lse(q, k, v, causal: bool, scale: float):
    """A reference kernel for split_prefill_attention: fp32, GQA by repeat."""
    group = q.shape[1] // k.shape[1]
    valid = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril() if causal else None
    return attention_lse_math(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), scale, valid)


TEXTS = ["a red square enters at the top left, then the blue circle moves right."] * 8


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(ModelConfig(dtype="float32"), tokenizer_texts=TEXTS, seed=0)
    g = torch.Generator().manual_seed(0)
    videos = [
        VisionInputs(torch.randn(t * 4 * 4, 3 * 2 * 14 * 14, generator=g), torch.tensor([[t, 4, 4]]), 1.0)
        for t in (4, 2)
    ]
    questions = ["Which moved first?", "What color is the square that enters at the top left?"]
    prompts = [
        build_prompt(model, tok, [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}], v)
        for v, q in zip(videos, questions)
    ]
    assert len(prompts[0]) != len(prompts[1])
    return model, prompts, videos


def hf_greedy(model, prompt, vision, steps: int) -> list[int]:
    mm = (prompt.input_ids == model.config.video_token_id).int() * 2
    out = model.generate(
        input_ids=prompt.input_ids[None],
        attention_mask=torch.ones_like(prompt.input_ids)[None],
        pixel_values_videos=vision.pixel_values,
        video_grid_thw=vision.grid_thw,
        second_per_grid_ts=torch.tensor([vision.second_per_grid]),
        mm_token_type_ids=mm[None],
        do_sample=False,
        max_new_tokens=steps,
        min_new_tokens=steps,
    )
    return out[0, len(prompt) :].tolist()


def teacher_forced_logprobs(model, prompt, tokens: list[int], temperature: float) -> torch.Tensor:
    response = torch.tensor(tokens)
    embeds = torch.cat([prompt_embeds(model, prompt), model.get_input_embeddings()(response)])
    positions = torch.cat([prompt.position_ids, prompt.response_positions(len(tokens))], dim=1)
    with torch.no_grad():
        hidden = decoder_forward(model, embeds[None], positions[:, None])
        logits = model.lm_head(hidden[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]).float()
    return (logits / temperature).log_softmax(-1).gather(-1, response[:, None])[:, 0]


def test_greedy_matches_transformers_generate_with_video(tiny):
    model, prompts, videos = tiny
    expected = [hf_greedy(model, prompt, vision, steps=16) for prompt, vision in zip(prompts, videos)]
    # chunks of 7 tokens: the prefill crosses chunk boundaries inside the video
    out = generate(
        model,
        prompts,
        SamplingParams(n=2, greedy=True, max_new_tokens=16),
        config=RolloutConfig(prefill_chunk_tokens=7),
    )
    for group, tokens in zip(out, expected):
        assert [s.token_ids for s in group] == [tokens, tokens]
        assert all(s.finish_reason == "length" for s in group)


def test_batched_prompts_match_prompts_alone(tiny):
    model, prompts, _ = tiny
    params = SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=11)
    together = generate(model, prompts, params)
    alone = generate(model, prompts, params, config=RolloutConfig(max_prompts_per_batch=1))
    assert [[s.token_ids for s in g] for g in together] == [[s.token_ids for s in g] for g in alone]
    for ga, gb in zip(together, alone):
        for a, b in zip(ga, gb):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
    # the n samples of one prompt differ from each other (independent streams)
    assert len({tuple(s.token_ids) for s in together[0]}) == 3


def test_shared_prefix_equals_replicated_prefix(tiny):
    model, prompts, _ = tiny
    params = SamplingParams(n=4, temperature=1.0, top_k=40, max_new_tokens=16, seed=7)
    shared = generate(model, [prompts[0]], params)[0]  # one prefix KV read by 4 samples
    replicated = generate(model, [prompts[0]] * 4, dataclasses.replace(params, n=1))  # 4 prefix copies
    replicated = [g[0] for g in replicated]
    assert [s.token_ids for s in shared] == [s.token_ids for s in replicated]
    for a, b in zip(shared, replicated):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.9, 50), (1.3, 1.0, 0), (0.0, 1.0, 0)])
def test_logprobs_match_teacher_forced_forward(tiny, temperature, top_p, top_k):
    model, prompts, _ = tiny
    params = SamplingParams(n=2, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=12, seed=5)
    out = generate(model, prompts, params, config=RolloutConfig(prefill_chunk_tokens=16))
    for prompt, group in zip(prompts, out):
        for s in group:
            assert len(s.token_ids) == len(s.logprobs) == 12
            ref = teacher_forced_logprobs(model, prompt, s.token_ids, temperature or 1.0)
            assert (torch.tensor(s.logprobs) - ref).abs().max().item() < 1e-4


def test_stop_tokens_end_samples_and_match_unstopped_run(tiny):
    model, prompts, _ = tiny
    base = SamplingParams(n=4, temperature=1.0, max_new_tokens=20, seed=3)
    free = generate(model, prompts, base)
    # stop on a handful of tokens the free run produces, so samples stop at different steps
    seen = [t for g in free for s in g for t in s.token_ids[3:6]]
    stops = tuple(sorted(set(seen))[:6])
    # check every step, so whole prompts finish and the batch is compacted mid-run
    stopped = generate(
        model, prompts, dataclasses.replace(base, stop_token_ids=stops), config=RolloutConfig(finish_check_interval=1)
    )
    reasons = set()
    for gf, gs in zip(free, stopped):
        for f, s in zip(gf, gs):
            first = next((j for j, t in enumerate(f.token_ids) if t in stops), None)
            if first is None:
                assert s.finish_reason == "length" and s.token_ids == f.token_ids and len(s.token_ids) == 20
            else:
                assert s.finish_reason == "stop" and s.token_ids == f.token_ids[: first + 1]
                assert s.token_ids[-1] in stops and len(s.logprobs) == first + 1
            reasons.add(s.finish_reason)
    assert "stop" in reasons


def test_greedy_stop_token_and_max_length(tiny):
    model, prompts, _ = tiny
    free = generate(model, [prompts[0]], SamplingParams(n=1, greedy=True, max_new_tokens=16))[0][0].token_ids
    # the first token new to the output from position 2 on (position 0 when greedy repeats one token)
    k = next((j for j in range(2, 16) if free[j] not in free[:j]), 0)
    out = generate(model, [prompts[0]], SamplingParams(n=2, greedy=True, max_new_tokens=16, stop_token_ids=(free[k],)))[
        0
    ]
    for s in out:
        assert s.token_ids == free[: k + 1] and s.finish_reason == "stop"
    one = generate(model, [prompts[0]], SamplingParams(n=1, greedy=True, max_new_tokens=1))[0][0]
    assert one.token_ids == free[:1] and one.finish_reason == "length"


def test_sampler_frequencies_and_truncation():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = 20000
    vocab = hashed_vocab(6, torch.device("cpu"))
    keys = row_keys(123, torch.arange(rows))
    step = torch.tensor(4)
    batch = logits.expand(rows, -1)
    for temperature in (1.0, 0.5):
        tokens, lps = sample_tokens(batch, SamplingParams(temperature=temperature), keys, step, vocab)
        freq = torch.bincount(tokens, minlength=6).float() / rows
        probs = (logits / temperature).softmax(-1)
        assert (freq - probs).abs().max().item() < 0.015
        assert torch.allclose(lps, probs.log()[tokens], atol=1e-6)
    tokens, _ = sample_tokens(batch, SamplingParams(top_k=2), keys, step, vocab)
    assert set(tokens.tolist()) == {0, 1}
    # nucleus: p = [.56, .21, .13, .08, ...]; top_p=0.8 keeps the first three (mass before 3rd = .77)
    tokens, _ = sample_tokens(batch, SamplingParams(top_p=0.8), keys, step, vocab)
    assert set(tokens.tolist()) == {0, 1, 2}
    # a different step or key gives different draws, the same ones give the same draws
    again, _ = sample_tokens(batch, SamplingParams(), keys, step, vocab)
    other, _ = sample_tokens(batch, SamplingParams(), keys, torch.tensor(5), vocab)
    assert torch.equal(again, sample_tokens(batch, SamplingParams(), keys, step, vocab)[0])
    assert (again != other).float().mean() > 0.3


def test_cascade_attention_equals_full_attention():
    g = torch.Generator().manual_seed(0)
    hq, hkv, d, n, window, length = 8, 2, 16, 3, 8, 5
    prefix_lens = [13, 29]
    prefixes = [(torch.randn(hkv, p, d, generator=g), torch.randn(hkv, p, d, generator=g)) for p in prefix_lens]
    rows = n * len(prefix_lens)
    q = torch.randn(rows, hq, d, generator=g)
    sk = torch.randn(rows, hkv, window, d, generator=g)
    sv = torch.randn(rows, hkv, window, d, generator=g)
    out = cascade_attention(q, prefixes, n, sk, sv, torch.tensor(length), 0.25)
    for r in range(rows):
        pk, pv = prefixes[r // n]
        k = torch.cat([pk, sk[r, :, :length]], 1)[None]
        v = torch.cat([pv, sv[r, :, :length]], 1)[None]
        ref = F.scaled_dot_product_attention(q[r][None, :, None], k, v, scale=0.25, enable_gqa=True)[0, :, 0]
        assert (out[r] - ref).abs().max().item() < 1e-5
    # folding the group into rows is a pure permutation
    assert torch.equal(unfold_rows(fold_queries(q[:n], hkv), n), q[:n])
    o, lse = prefix_attention(q[:n], *prefixes[0], 0.25)
    scores = torch.einsum("hrd,hpd->hrp", fold_queries(q[:n], hkv), prefixes[0][0]) * 0.25
    assert torch.allclose(lse, scores.logsumexp(-1), atol=1e-5)


def test_chunked_prefill_matches_full_forward(tiny):
    model, prompts, _ = tiny
    prompt = prompts[0]
    dec = TextDecoder(model)
    with torch.no_grad():
        kv_a, hidden_a = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=5)
        kv_b, hidden_b = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=4096)
        logits_a, logits_b = dec.logits(hidden_a), dec.logits(hidden_b)
        hidden = decoder_forward(model, prompt_embeds(model, prompt)[None], prompt.position_ids[:, None])
        ref = model.lm_head(hidden[0, -1]).float()
    assert (kv_a.k - kv_b.k).abs().max().item() < 1e-5 and (kv_a.v - kv_b.v).abs().max().item() < 1e-5
    assert (logits_a - ref).abs().max().item() < 1e-4 and (logits_b - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("chunk, keys", [(7, 7), (5, 19), (1, 12)])
def test_split_prefill_attention_equals_bottom_right_causal(chunk, keys):
    """The GPU prefill's form (chunk over earlier keys unmasked + over itself causally, merged by
    log-sum-exp; here on the fp32 reference kernel) equals one bottom-right causal attention."""
    g = torch.Generator().manual_seed(chunk)
    q = torch.randn(1, 8, chunk, 16, generator=g)
    k, v = torch.randn(1, 2, keys, 16, generator=g), torch.randn(1, 2, keys, 16, generator=g)
    ref = prefill_attention(q, k, v, 0.3)
    for bucket in (1, 4, 16):  # zero-padded chunk ends (shared cuDNN plans) change nothing
        got = split_prefill_attention(q, k, v, 0.3, kernel=math_with_lse, bucket=bucket)
        assert got.shape == ref.shape and (got - ref).abs().max().item() < 1e-5


def test_compiled_prefill_equals_eager(tiny, monkeypatch):
    """The prefill through the compiled layer functions (aot_eager here; inductor on the GPU),
    across chunks of two lengths (the second compile is length-generic)."""
    import longrl.models.decoder as decoder

    monkeypatch.setattr(decoder, "_compile", lambda fn: torch.compile(fn, backend="aot_eager"))
    monkeypatch.setattr(decoder, "_compiled_layer_fns", None)
    model, prompts, _ = tiny
    dec = TextDecoder(model)
    with torch.no_grad():
        for prompt in prompts:
            kv_a, hidden_a = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=9, compiled=True)
            kv_b, hidden_b = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=9)
            assert (kv_a.k - kv_b.k).abs().max().item() < 1e-5 and (kv_a.v - kv_b.v).abs().max().item() < 1e-5
            assert (hidden_a - hidden_b).abs().max().item() < 1e-5
    assert decoder._compiled_layer_fns is not None


def test_bad_prompts_and_params_fail_clearly(tiny):
    model, prompts, _ = tiny
    p = prompts[0]
    params = SamplingParams(max_new_tokens=4)
    empty = dataclasses.replace(p, input_ids=p.input_ids[:0], position_ids=p.position_ids[:, :0], video_embeds=None)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [p, empty], params)
    with pytest.raises(ValueError, match="prompt 0 is too long"):
        generate(model, [p], params, config=RolloutConfig(max_context_tokens=len(p) + 3))
    positions = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match="prompt 0 is too long: its response would reach"):
        generate(model, [dataclasses.replace(p, next_position=positions - 2)], params)
    with pytest.raises(ValueError, match=r"position_ids must be \[3, "):
        generate(model, [dataclasses.replace(p, position_ids=p.position_ids[0])], params)
    with pytest.raises(ValueError, match="video placeholder tokens but"):
        generate(model, [dataclasses.replace(p, video_embeds=p.video_embeds[:-1])], params)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [dataclasses.replace(p, input_ids=p.input_ids + 10**6)], params)
    with pytest.raises(ValueError, match="not a Prompt"):
        generate(model, ["describe the video"], params)
    with pytest.raises(ValueError, match="non-empty list"):
        generate(model, [], params)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [p], SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="n must be"):
        generate(model, [p], SamplingParams(n=0))
