"""``longrl bench rollout``: a GRPO group's generation, transformers ``generate`` vs longrl.

A random Qwen2.5-VL (3B shape, or ``--tiny``) gets a prompt around F frames of 448x448 video
(F/2 temporal groups x 16x16 merged patches = 128*F video tokens). The video embeddings are
synthetic (random, as if read from the embedding cache): this measures generation, not the
vision tower, and both engines get the very same embeddings (transformers through its own
placeholder scatter, with the tower's output replaced). N samples of T new tokens each, EOS
ignored (min_new_tokens = max_new_tokens).

``--family qwen2`` (``llama``): a random text-only Qwen2ForCausalLM at the Qwen2.5-1.5B shape
(LlamaForCausalLM at Llama-3.2-1B's), or the family's tiny model, gets a prompt of P random
token ids (``--prompt-tokens``, seeded); transformers runs it as its users do, one
``generate(input_ids, num_return_sequences=N)`` call (the prompt expanded to N rows).

Per configuration (comma lists in --frames (--prompt-tokens)/--n/--new-tokens run the cross
product in one process) one JSON line:

* ``hf_tok_s`` / ``longrl_tok_s``: N*T over the wall time of the whole generate call (prefill +
  decode) for each engine; ``speedup`` is their ratio, against the fastest of ``--hf-repeats`` transformers
  runs (``hf_runs_s`` lists them). Null where transformers ran out of memory.
* ``hf_video_tok_s`` (``--hf-video``): transformers from pixels through the vision tower, as a
  plain transformers user runs a video prompt (the tower runs N times: generate expands the
  pixels); ``speedup_vs_hf_video`` compares longrl from cached embeddings with it.
* ``cold_prefill_s``: prefill of the first call at this prompt length (cuDNN plan builds);
  the timed calls after it are what an RL run sees once a length bucket recurs.
* ``longrl_decode_tok_s``: N*(T-1) over longrl's decode phase alone (prefill excluded), and
  ``roofline_frac`` = that over the decode roofline: per step, read the weights (decoder + LM
  head), one prefix KV and the N suffix KVs at the GPU's datasheet bandwidth, for N tokens.
* ``greedy_match``: greedy tokens equal token for token (``greedy_match_frac``: the matching
  leading fraction, ``first_mismatch``). Random weights give nearly flat logits, so bf16 runs can
  legitimately part at a near-tie; ``fp32_tiny_greedy_match`` is the exact check (tiny model,
  fp32, same device), and ``attn_*_rel_err`` check the bf16 cascade attention kernels
  against an fp32 reference.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import torch
from transformers import PretrainedConfig

from benchmarks.common import (
    device_name,
    gpu_peak_bandwidth,
    llama32_1b_config,
    measured_copy_bandwidth,
    qwen2_1p5b_config,
    qwen25vl_3b_config,
    random_model,
    tiny_bench_config,
    tiny_text_config,
    video_ids,
)
from longrl.models.adapter import lm_head
from longrl.models.family import family_of
from longrl.models.inputs import Prompt, VisionInputs
from longrl.models.vision_attention import transformers_vision_attention
from longrl.rollout import RolloutConfig, SamplingParams, generate
from longrl.rollout.attention import attention_lse_math, cascade_attention, prefill_attention

FRAME_TOKENS = 128  # a 448x448 frame: 32x32 patches, 2x2-merged, 2 frames per temporal patch
# --family: (the full shape's name, its config, the tiny config); the first is the video family
MODELS: dict[str, tuple[str, Callable[[], PretrainedConfig], Callable[[], PretrainedConfig]]] = {
    "qwen2_5_vl": ("qwen2.5-vl-3b-shape", qwen25vl_3b_config, tiny_bench_config),
    "qwen2": ("qwen2.5-1.5b-shape", qwen2_1p5b_config, lambda: tiny_text_config("qwen2")),
    "llama": ("llama-3.2-1b-shape", llama32_1b_config, lambda: tiny_text_config("llama")),
}


def video_prompt(model, frames: int, seed: int = 0) -> Prompt:
    """A chat-shaped prompt around ``frames`` frames of video with random video embeddings."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([[max(frames // 2, 1), 32, 32]])
    n_video = int(grid.prod()) // 4
    ids = video_ids(cfg, n_video, g, high=100_000)
    mm_type = (ids == cfg.video_token_id).int() * 2
    positions, _ = model.model.get_rope_index(
        ids[None], mm_token_type_ids=mm_type[None], video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0])
    )
    embeds = torch.randn(n_video, cfg.text_config.hidden_size, generator=g) * 0.02
    # a stand-in for VisionInputs without pixels (the embeddings are given): the grid and its timing
    vision = cast(VisionInputs, SimpleNamespace(pixel_values=None, grid_thw=grid, second_per_grid=1.0))
    return Prompt(
        ids.to(model.device),
        positions[:, 0].to(model.device),
        embeds.to(device=model.device, dtype=model.dtype),
        vision,
        int(positions.max()) + 1,
    )


def text_prompt(model, tokens: int, seed: int = 0) -> Prompt:
    """A text-only prompt of ``tokens`` random (seeded) token ids, clear of the low special ids."""
    vocab = lm_head(model).weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(100, vocab // 2), min(vocab, 100_000), (tokens,), generator=g)
    positions = family_of(model).positions(model, ids, None)
    return Prompt(ids.to(model.device), positions.to(model.device), None, None, tokens)


def is_video(model) -> bool:
    return family_of(model).vision_tower(model) is not None


def bench_prompt(model, size: int, seed: int = 0) -> Prompt:
    """The prompt of one configuration: ``size`` frames of video, or ``size`` tokens of text."""
    return video_prompt(model, size, seed) if is_video(model) else text_prompt(model, size, seed)


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def hf_generate(model, prompt: Prompt, n: int, new_tokens: int, greedy: bool, video: bool = False) -> torch.Tensor:
    """transformers ``generate`` on the same prompt: [n, new_tokens] token ids.

    A text prompt is one plain ``generate(input_ids, num_return_sequences=n)``. For a video prompt
    the vision tower's output is replaced by ``prompt.video_embeds`` (the pixel tensor is a
    placeholder with one row per patch); everything else is transformers' own path: placeholder
    scatter, 3-D M-RoPE from ``mm_token_type_ids``, replicated-prompt prefill, KV cache.
    ``video``: instead, random pixels of the same grid go through the vision tower, as plain
    transformers runs a video prompt (it expands the pixels with num_return_sequences, so the
    tower runs n times); timing only, the tokens differ. ``greedy`` decodes one sequence by
    argmax (transformers refuses greedy with num_return_sequences > 1); otherwise n sequences
    are sampled at temperature 1."""
    cfg, device = model.config, model.device
    ids = prompt.input_ids[None]
    if greedy and n != 1:
        raise ValueError("transformers decodes greedily one sequence per prompt: use n=1")
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    call: dict[str, Any] = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        num_return_sequences=n,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
        **sampling,
    )
    vision = prompt.vision
    if vision is None:  # a text prompt: plain generate
        assert not video, "a text prompt has no video"
        return model.generate(**call)[:, ids.shape[1] :]
    grid = vision.grid_thw.to(device)
    inner = model.model
    vc = cfg.vision_config
    if video:
        patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        pixels = torch.randn(int(grid.prod()), patch, device=device, dtype=model.dtype)
    else:
        pixels = torch.zeros(int(grid.prod()), 1, device=device, dtype=model.dtype)

        def synthetic_tower(pixel_values_videos, video_grid_thw=None, **kwargs):
            return SimpleNamespace(pooler_output=[prompt.video_embeds] * video_grid_thw.shape[0])

        inner.get_video_features = synthetic_tower
    try:
        with transformers_vision_attention(inner.visual):  # transformers' own tower, whatever longrl installed
            out = model.generate(
                **call,
                pixel_values_videos=pixels,
                video_grid_thw=grid,
                second_per_grid_ts=torch.tensor([vision.second_per_grid], device=device),
                mm_token_type_ids=(ids == cfg.video_token_id).int() * 2,
            )
    finally:
        inner.__dict__.pop("get_video_features", None)
        inner.rope_deltas = None
    return out[:, ids.shape[1] :]


def decode_roofline(model, prefix_tokens: int, n: int, new_tokens: int, bandwidth: float, prompts: int = 1) -> float:
    """Tokens/s if a decode step cost only reading weights + one prefix KV per prompt + the n
    suffix KVs of each. The text decoder's weights only (no vision tower) and its KV shape."""
    family, head = family_of(model), lm_head(model).weight
    text = family.decoder(model)
    weights = sum(p.numel() * p.element_size() for name, p in text.named_parameters() if "embed_tokens" not in name)
    weights += head.numel() * head.element_size()
    cfg = family.text_config(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * head.element_size()
    step_bytes = weights + kv_token * prompts * (prefix_tokens + n * new_tokens / 2)
    return prompts * n * bandwidth / step_bytes


def kernel_checks(device: torch.device, dtype: torch.dtype, triton: bool, seed: int = 0) -> dict:
    """Relative errors (vs fp32 math on the same rounded inputs) of the bf16 cascade attention
    with the flash split-KV (the path without Triton) and of the fused Triton decode attention
    (rotary, suffix-cache write, prefix + suffix attention, merge)."""
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, device=device).to(dtype)  # noqa: E731
    rel = lambda out, ref: float(f"{((out.float() - ref).norm() / ref.norm()).item():.2e}")  # noqa: E731
    n, hq, hkv, d, prefix, window, length = 8, 16, 2, 128, 16384 + 37, 128, 77
    q, pk, pv, sk, sv = (
        rnd(n, hq, d),
        rnd(hkv, prefix, d),
        rnd(hkv, prefix, d),
        rnd(n, hkv, window, d),
        rnd(n, hkv, window, d),
    )
    length_t, scale = torch.tensor(length, device=device), d**-0.5
    ref = cascade_attention(q.float(), [(pk.float(), pv.float())], n, sk.float(), sv.float(), length_t, scale)
    checks = dict(attn_flash_rel_err=rel(cascade_attention(q, [(pk, pv)], n, sk, sv, length_t, scale), ref))
    # a prefill chunk of 3000 queries after 5000 earlier keys (the cuDNN split on GPU)
    c, e = 3000, 8000
    qc, kc, vc = rnd(1, hq, c, d), rnd(1, hkv, e, d), rnd(1, hkv, e, d)
    causal = torch.ones(c, e, dtype=torch.bool, device=device).tril(e - c)
    ref, _ = attention_lse_math(
        qc.float(),
        kc.float().repeat_interleave(hq // hkv, 1),
        vc.float().repeat_interleave(hq // hkv, 1),
        scale,
        causal,
    )
    checks["attn_prefill_rel_err"] = rel(prefill_attention(qc, kc, vc, scale), ref)
    if triton:
        from longrl.models.decoder import rotate_half
        from longrl.rollout import kernels

        # raw (pre-rotary) projections of step t = length - 1; the kernel rotates and caches them
        k_new, v_new = rnd(n, hkv * d), rnd(n, hkv * d)
        angles = torch.rand(1, 2 * window, d // 2, generator=g, device=device) * 100
        cos, sin = (torch.cat([f(angles)] * 2, -1).to(dtype) for f in (torch.cos, torch.sin))
        t = torch.tensor(length - 1, device=device)
        plan = kernels.attention_plan([prefix], n, hq, hkv, d, device)
        sk_k, sv_k = sk.clone(), sv.clone()
        out = kernels.decode_attention(plan, q.flatten(1), k_new, v_new, cos, sin, t, [(pk, pv)], sk_k, sv_k, scale)
        cos_t, sin_t = cos[:, length - 1, None].float(), sin[:, length - 1, None].float()
        rot = lambda x: x * cos_t + rotate_half(x) * sin_t  # noqa: E731
        sk_ref, sv_ref = sk.float(), sv.float()
        sk_ref[:, :, length - 1] = rot(k_new.float().view(n, hkv, d))
        sv_ref[:, :, length - 1] = v_new.float().view(n, hkv, d)
        ref = cascade_attention(rot(q.float()), [(pk.float(), pv.float())], n, sk_ref, sv_ref, length_t, scale)
        checks["attn_fused_rel_err"] = rel(out.view(n, hq, d), ref)
        checks["attn_fused_cache_rel_err"] = rel(sk_k[:, :, length - 1], sk_ref[:, :, length - 1])
        # the sampling kernels vs the torch sampler (same integer noise): tokens equal, log-probs close
        from longrl.rollout.sampling import SamplingParams as SP, hashed_vocab, row_keys, sample_tokens

        vocab = 151936
        logits = (torch.randn(n, vocab, generator=g, device=device) * 4).to(dtype)
        keys, vh = row_keys(3, torch.arange(n, device=device)), hashed_vocab(vocab, device)
        match, lp_diff = [], 0.0
        for temperature, greedy in ((1.0, False), (0.7, False), (1.0, True)):
            for step in range(4):
                t = torch.tensor(step, device=device)
                ref_tok, ref_lp = sample_tokens(logits, SP(temperature=temperature, greedy=greedy), keys, t, vh)
                tok, lp = kernels.sample(logits, keys, t, vh, temperature, greedy)
                match.append((tok == ref_tok).float().mean().item())
                lp_diff = max(lp_diff, (lp - ref_lp).abs().max().item())
        checks.update(
            sample_kernel_token_match=round(sum(match) / len(match), 4),
            sample_kernel_logprob_max_abs_diff=float(f"{lp_diff:.2e}"),
        )
    return checks


def graph_replay_ms(fn, reps: int) -> float:
    """Milliseconds per replay of ``fn`` captured in one CUDA graph (warm-up run, capture, one replay first)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def gemm_times(model, rows: int = 8, reps: int = 20) -> dict:
    """Per-layer time (us) of the decode step's weight GEMMs at ``rows`` rows, one projection
    at a time vs packed (one q/k/v, one gate/up GEMM), each variant captured as a CUDA graph
    over every layer's own weights (as a decode step streams them: no L2 reuse) and replayed."""
    from longrl.rollout.decoder import TextDecoder
    from longrl.rollout.ops import decode_weights

    dec = TextDecoder(model)
    sep, packed = decode_weights(dec, pack=False), decode_weights(dec, pack=True)
    g = torch.Generator(device=model.device).manual_seed(0)
    x = torch.randn(rows, dec.hidden_size, generator=g, device=model.device, dtype=model.dtype)
    xi = torch.randn(rows, sep[0].down_w.shape[1], generator=g, device=model.device, dtype=model.dtype)
    lin = torch.nn.functional.linear
    side = torch.cuda.Stream()

    def two_streams(first, second):
        """``first()`` on a side stream, ``second()`` on the current one, joined (a fork in the graph)."""
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            a = first()
        b = second()
        main.wait_stream(side)
        return a, b

    def k_halves(x_, w):  # two GEMMs over halves of K, concurrently (partial sums, timing only)
        k = w.shape[1] // 2
        return two_streams(lambda: lin(x_[:, :k], w[:, :k]), lambda: lin(x_[:, k:], w[:, k:]))

    variants = {
        "q_k_v": lambda: [lin(x, w, b) for lw in sep for w, b in lw.qkv],
        "qkv_packed": lambda: [lin(x, w, b) for lw in packed for w, b in lw.qkv],
        "o": lambda: [lin(x, lw.o_w) for lw in sep],
        "gate_up": lambda: [lin(x, w) for lw in sep for w in lw.mlp_in],
        "gate_up_packed": lambda: [lin(x, w) for lw in packed for w in lw.mlp_in],
        "down": lambda: [lin(xi, lw.down_w) for lw in sep],
        "gate_up_2streams": lambda: [
            two_streams(lambda: lin(x, lw.mlp_in[1]), lambda: lin(x, lw.mlp_in[0])) for lw in sep
        ],
        "gate_up_packed_khalves_2streams": lambda: [k_halves(x, lw.mlp_in[0]) for lw in packed],
        "down_khalves_2streams": lambda: [k_halves(xi, lw.down_w) for lw in sep],
        "o_khalves_2streams": lambda: [k_halves(x, lw.o_w) for lw in sep],
        "qkv_packed_khalves_2streams": lambda: [k_halves(x, lw.qkv[0][0]) for lw in packed],
        "lm_head_total": lambda: [lin(x, dec.lm_head.weight) for _ in range(dec.num_layers)],
    }
    out = {name: round(1e3 * graph_replay_ms(fn, reps) / dec.num_layers, 2) for name, fn in variants.items()}
    del sep, packed
    return dict(gemm_rows=rows, gemm_us_per_layer=out)


def attention_sweep(
    device: torch.device, dtype: torch.dtype, prefix: int, n: int, layers: int = 36, step: int = 100, reps: int = 20
) -> dict:
    """Per-layer time (us) of the fused decode attention (attention kernel + merge) at the 3B
    model's head shape for launch variants (warps per program, prefix programs per prompt),
    captured over ``layers`` distinct prefix KVs (as a step reads them: no L2 reuse)."""
    from longrl.rollout import kernels

    hq, hkv, d, capacity = 16, 2, 128, 127
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g, device=device).to(dtype)  # noqa: E731
    pk, pv = rnd(layers, hkv, prefix, d), rnd(layers, hkv, prefix, d)
    sk, sv = rnd(layers, n, hkv, capacity, d), rnd(layers, n, hkv, capacity, d)
    q, k, v = rnd(n, (hq + 2 * hkv) * d).split([hq * d, hkv * d, hkv * d], dim=1)
    cos, sin = rnd(1, capacity + 1, d), rnd(1, capacity + 1, d)
    t = torch.tensor(step, device=device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    variants = {
        "w4_1cta_per_sm": dict(num_warps=4, programs=sms),
        "w8_1cta_per_sm": dict(num_warps=8, programs=sms),
        "w8_sm_minus_suffix": dict(num_warps=8, programs=sms - n * hkv),
        "w4_sm_minus_suffix (default)": dict(num_warps=4, programs=sms - n * hkv),
        "w4_2ctas_per_sm": dict(num_warps=4, programs=2 * sms),
        "w8_bn32_sm_minus_suffix": dict(num_warps=8, block_n=32, programs=sms - n * hkv),
    }
    out: dict[str, dict[str, Any] | str] = {}
    for name, kw in variants.items():
        plan = kernels.attention_plan([prefix], n, hq, hkv, d, device, **kw)

        def fn():
            for i in range(layers):
                kernels.decode_attention(plan, q, k, v, cos, sin, t, [(pk[i], pv[i])], sk[i], sv[i], d**-0.5)

        try:
            out[name] = dict(us=round(1e3 * graph_replay_ms(fn, reps) / layers, 2), splits=plan.splits)
        except Exception as error:  # a variant that fails to compile or launch is reported, not fatal
            out[name] = f"{type(error).__name__}: {error}"[:200]
    return dict(attn_prefix=prefix, attn_n=n, attn_us_per_layer=out)


def teacher_forced_checks(model, prompt: Prompt, greedy, sampled) -> dict:
    """Tie-proof checks of longrl's outputs against one teacher-forced transformers forward of the
    prompt + response: is each greedy token the forward's argmax (and by how much it loses where
    not: a near-tie), and do the reported sampling log-probs match the forward's?"""
    from longrl.models.adapter import decoder_forward, prompt_embeds

    out = {}
    for name, sample in (("greedy", greedy), ("sampled", sampled)):
        tokens = torch.tensor(sample.token_ids, device=model.device)
        embeds = torch.cat([prompt_embeds(model, prompt), model.get_input_embeddings()(tokens)])
        positions = torch.cat([prompt.position_ids, prompt.response_positions(len(tokens))], dim=1)
        with torch.no_grad():
            hidden = decoder_forward(model, embeds[None], positions[:, None])[0, len(prompt) - 1 : -1]
            logits = model.lm_head(hidden).float()
        chosen = logits.gather(-1, tokens[:, None])[:, 0]
        if name == "greedy":
            out["greedy_tf_argmax_frac"] = round((logits.argmax(-1) == tokens).float().mean().item(), 3)
            out["greedy_tf_max_logit_gap"] = round((logits.max(-1).values - chosen).max().item(), 4)
        else:
            diff = (
                logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
                - torch.tensor(sample.logprobs, device=model.device)
            ).abs()
            out.update(
                tf_logprob_max_abs_diff=round(diff.max().item(), 4),
                tf_logprob_mean_abs_diff=round(diff.mean().item(), 5),
            )
    return out


def tiny_fp32_check(
    device: torch.device, family: str = "qwen2_5_vl", frames: int = 8, tokens: int = 1024, new_tokens: int = 32
) -> bool:
    """Exact greedy equality with transformers: the family's tiny model, fp32, same device (graphs
    on), on ``frames`` of video or ``tokens`` of text."""
    model = random_model(MODELS[family][2](), device=device, dtype=torch.float32, seed=1)
    family_of(model).prepare(model)
    prompt = bench_prompt(model, frames if is_video(model) else tokens, seed=1)
    if prompt.video_embeds is not None:
        prompt.video_embeds = prompt.video_embeds * 50  # a distinctive prefix keeps logits away from ties
    hf = hf_generate(model, prompt, 1, new_tokens, greedy=True)[0].tolist()
    ours = generate(
        model,
        [prompt],
        SamplingParams(n=2, greedy=True, max_new_tokens=new_tokens),
        config=RolloutConfig(compile=False),
    )[0]
    del model
    return all(s.token_ids == hf for s in ours)


def run_config(model, size: int, n: int, new_tokens: int, args, bandwidth: float | None) -> dict:
    """One configuration: ``size`` frames of video (or tokens of text), n samples of new_tokens."""
    device = model.device
    prompt = bench_prompt(model, size)
    # --prompts P: P different videos of F frames (texts of P tokens) in one generate call (an RL step's batch)
    prompts = [prompt] + [bench_prompt(model, size, seed=i) for i in range(1, args.prompts)]
    config = rollout_config(args)
    video = is_video(model)
    result: dict[str, Any] = {"frames" if video else "prompt_tokens": size}
    result.update(prefix_tokens=len(prompt), n=n, new_tokens=new_tokens, prompts=len(prompts))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hf_skip = (
        "--no-hf"
        if args.no_hf
        else (f"frames > --hf-max-frames {args.hf_max_frames}" if video and size > args.hf_max_frames else None)
    )
    if len(prompts) > 1:
        hf_skip = "--prompts > 1 (transformers runs one prompt's group per generate call: see the --prompts 1 line)"
    # The first call at a new prompt length builds cuDNN's attention plans for its shapes (one
    # length bucket, attention.PREFILL_BUCKET); an RL run pays that once per bucket. Timed apart.
    stats: dict = {}
    generate(model, prompts, SamplingParams(n=n, max_new_tokens=2, seed=1), config=config, stats=stats)
    result["cold_prefill_s"] = round(stats["prefill_s"], 3)
    runs = {}
    variants = [("sampled", SamplingParams(n=n, temperature=1.0, max_new_tokens=new_tokens, seed=0))]
    if not hf_skip:  # the greedy run is there to compare with transformers
        variants.insert(0, ("greedy", SamplingParams(n=n, greedy=True, max_new_tokens=new_tokens)))
    for name, params in variants:
        stats = {}
        t0 = _sync(device)
        out = generate(model, prompts if name == "sampled" else [prompt], params, config=config, stats=stats)
        runs[name] = (_sync(device) - t0, stats, out[0])
    seconds, stats, samples = runs["sampled"]
    assert all(len(s.token_ids) == new_tokens for s in samples)
    rows = len(prompts) * n
    steady_steps = stats["decode_steps"] - stats["eager_steps"]
    steady_s = stats["decode_s"] - stats["capture_s"]
    result.update(
        longrl_s=round(seconds, 3),
        longrl_tok_s=round(rows * new_tokens / seconds, 1),
        prefill_s=round(stats["prefill_s"], 3),
        pack_s=round(stats["pack_s"], 3),
        decode_s=round(stats["decode_s"], 3),
        # steady state: graph replays only; the per-call eager step + capture is reported apart
        longrl_decode_tok_s=round(rows * steady_steps / steady_s, 1),
        decode_step_ms=round(1e3 * steady_s / steady_steps, 3),
        longrl_decode_incl_capture_tok_s=round(rows * stats["decode_steps"] / stats["decode_s"], 1),
        capture_s=round(stats["capture_s"], 3),
        graph_captures=stats["graph_captures"],
        compiled=stats["compiled"],
        pack_weights=config.pack_weights,
        packed_weight_gb=stats["packed_weight_gb"],
        peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    )
    if bandwidth:
        roof = decode_roofline(model, len(prompt), n, new_tokens, bandwidth, len(prompts))
        result.update(roofline_tok_s=round(roof, 1), roofline_frac=round(result["longrl_decode_tok_s"] / roof, 3))
    result.update(hf_tok_s=None, hf_s=None, speedup=None, greedy_match=None)
    if hf_skip:
        result["hf_skipped"] = hf_skip
        return result
    g = runs["greedy"][1]
    result["longrl_greedy_decode_tok_s"] = round(
        n * (g["decode_steps"] - g["eager_steps"]) / (g["decode_s"] - g["capture_s"]), 1
    )
    greedy = runs["greedy"][2][0].token_ids
    result.update(teacher_forced_checks(model, prompt, runs["greedy"][2][0], samples[0]))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if args.skip_hf_generate:
            result["hf_skipped"] = "--skip-hf-generate (greedy n=1 comparison only)"
        else:
            runs_s = _timed_runs(
                args.hf_repeats, device, lambda: hf_generate(model, prompt, n, new_tokens, greedy=False)
            )
            hf_seconds = min(runs_s)
            result.update(
                hf_s=round(hf_seconds, 3),
                hf_runs_s=[round(t, 3) for t in runs_s],
                hf_tok_s=round(n * new_tokens / hf_seconds, 1),
                speedup=round(hf_seconds / seconds, 1),
            )
            if device.type == "cuda":
                result["hf_peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if args.hf_video:
                runs_s = _timed_runs(
                    args.hf_repeats, device, lambda: hf_generate(model, prompt, n, new_tokens, greedy=False, video=True)
                )
                hf_seconds = min(runs_s)
                result.update(
                    hf_video_s=round(hf_seconds, 3),
                    hf_video_runs_s=[round(t, 3) for t in runs_s],
                    hf_video_tok_s=round(n * new_tokens / hf_seconds, 1),
                    speedup_vs_hf_video=round(hf_seconds / seconds, 1),
                )
        hf_tokens = hf_generate(model, prompt, 1, new_tokens, greedy=True)[0].tolist()
    except torch.OutOfMemoryError as error:
        result["hf_error"] = f"out of memory: {str(error).splitlines()[0][:160]}"
        gc.collect()
        torch.cuda.empty_cache()
        return result
    first = next((j for j, (a, b) in enumerate(zip(greedy, hf_tokens)) if a != b), None)
    result.update(
        greedy_match=first is None,
        first_mismatch=first,
        greedy_match_frac=round((new_tokens if first is None else first) / new_tokens, 3),
        longrl_greedy_rows_identical=len({tuple(s.token_ids) for s in runs["greedy"][2]}) == 1,
    )
    return result


def _timed_runs(repeats: int, device: torch.device, fn) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``. The transformers baseline is timed more than
    once and its fastest run is the one compared: its first ``generate`` of the process carries
    transformers' warm-up (18.2 s, then 8.65 s for the same call on an H200, notes/gpu_latest.md)."""
    out = []
    for _ in range(max(1, repeats)):
        t0 = _sync(device)
        fn()
        out.append(_sync(device) - t0)
    return out


def rollout_config(args) -> RolloutConfig:
    return RolloutConfig(
        prefill_chunk_tokens=args.prefill_chunk,
        cuda_graphs=not args.no_graphs,
        compile=not args.no_compile,
        use_triton=not args.no_triton,
        pack_weights=not args.no_pack,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap = argparse.ArgumentParser(prog="longrl bench rollout", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--family",
        choices=list(MODELS),
        default="qwen2_5_vl",
        help="qwen2_5_vl: the 3B shape on video; qwen2: Qwen2.5-1.5B's shape, llama: Llama-3.2-1B's, on text",
    )
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (smoke runs)")
    ap.add_argument("--frames", type=ints, help="video frames at 448x448 (comma list; qwen2_5_vl, default 128)")
    ap.add_argument(
        "--prompt-tokens", type=ints, help="prompt length in tokens (comma list; text families, default 16384)"
    )
    ap.add_argument("--n", type=ints, default=[8], help="samples per prompt (comma list)")
    ap.add_argument("--new-tokens", type=ints, default=[128], help="new tokens per sample, EOS ignored (comma list)")
    ap.add_argument("--prompts", type=int, default=1, help="prompts per generate call (an RL step's batch)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--hf-max-frames", type=int, default=1 << 30, help="skip transformers above this many frames")
    ap.add_argument(
        "--skip-hf-generate",
        action="store_true",
        help="skip the timed n-sample transformers generate (keep the greedy comparisons)",
    )
    ap.add_argument(
        "--hf-repeats",
        type=int,
        default=2,
        help="time the transformers baseline this many times and compare with its fastest (the first is cold)",
    )
    ap.add_argument(
        "--hf-video",
        action="store_true",
        help="also time transformers generate from pixels through the vision tower (n encodes)",
    )
    ap.add_argument("--prefill-chunk", type=int, default=RolloutConfig.prefill_chunk_tokens)
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--no-pack", action="store_true", help="one GEMM per projection (no packed q/k/v, gate/up)")
    ap.add_argument(
        "--gemms",
        action="store_true",
        help="also time the decode GEMMs (separate, packed, two streams) and attention launch variants",
    )
    ap.add_argument("--no-checks", action="store_true", help="skip the fp32 tiny and attention checks")
    ap.add_argument("--profile", action="store_true", help="print a kernel table of the first configuration")
    args = ap.parse_args(argv)
    if args.family == "qwen2_5_vl":
        if args.prompt_tokens:
            ap.error("--prompt-tokens is for the text families (--family qwen2|llama); a video prompt takes --frames")
        args.frames = args.frames or [128]
    else:
        if args.frames or args.hf_video:
            ap.error(f"--family {args.family} is text-only: give --prompt-tokens, not --frames or --hf-video")
        args.prompt_tokens = args.prompt_tokens or [16384]
    args.sizes = args.frames or args.prompt_tokens
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    common: dict[str, Any] = dict(
        device=device.type,
        gpu=device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        family=args.family,
        model="tiny" if args.tiny else MODELS[args.family][0],
        torch=torch.__version__,
    )
    if args.family == "qwen2_5_vl":
        common["synthetic_video_embeddings"] = True
    else:
        common["random_token_ids"] = True
    if not args.no_checks:
        common["fp32_tiny_greedy_match"] = tiny_fp32_check(device, args.family)
        if device.type == "cuda":
            common.update(kernel_checks(device, dtype, triton=not args.no_triton))
    bandwidth = gpu_peak_bandwidth(device)
    if device.type == "cuda":
        common.update(
            peak_bw_tb_s=bandwidth and bandwidth / 1e12, copy_bw_tb_s=round(measured_copy_bandwidth(device) / 1e12, 2)
        )
    _, full, tiny = MODELS[args.family]
    model = random_model(tiny() if args.tiny else full(), device=device, dtype=dtype)
    family_of(model).prepare(model)
    # Warm-up: compile the decode step and initialise kernels outside the timed runs.
    t0 = _sync(device)
    warm = rollout_config(args)
    # Two prompt lengths: the second makes the compiled prefill's graph length-generic, as a run's
    # first few prompts do (16 and 24 frames; text of about their lengths).
    warm_sizes = (16, 24) if is_video(model) else (16 * FRAME_TOKENS, 24 * FRAME_TOKENS)
    for size, n, new_tokens, greedy in itertools.product(warm_sizes, args.n, args.new_tokens, (True, False)):
        generate(
            model,
            [bench_prompt(model, size)],
            SamplingParams(n=n, max_new_tokens=new_tokens, greedy=greedy, seed=1),
            config=warm,
        )
    common["warmup_s"] = round(_sync(device) - t0, 1)
    if args.gemms and device.type == "cuda":
        print(json.dumps(gemm_times(model, rows=args.n[0])), flush=True)
        prefix = len(bench_prompt(model, args.sizes[0]))
        print(json.dumps(attention_sweep(device, dtype, prefix, args.n[0])), flush=True)
    for size, n, new_tokens in itertools.product(args.sizes, args.n, args.new_tokens):
        try:
            result = run_config(model, size, n, new_tokens, args, bandwidth)
        except Exception as error:  # report and go on with the next configuration
            key = "frames" if is_video(model) else "prompt_tokens"
            result = {key: size, "n": n, "new_tokens": new_tokens, "error": f"{type(error).__name__}: {error}"[:500]}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps({**result, **common}), flush=True)
    if args.profile and device.type == "cuda":
        profile_decode(model, args.sizes[0], args.n[0], args)
    return 0


def profile_decode(model, size: int, n: int, args, new_tokens: int = 64) -> None:
    """Print the GPU kernels of one generate call (prefill + graph-replayed decode), by total time."""
    from torch.profiler import ProfilerActivity, profile

    prompt = bench_prompt(model, size)
    config = rollout_config(args)
    params = SamplingParams(n=n, max_new_tokens=new_tokens, seed=0)
    generate(model, [prompt], params, config=config)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate(model, [prompt], params, config=config)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))


if __name__ == "__main__":
    raise SystemExit(main())
