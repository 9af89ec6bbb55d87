"""``longrl bench step``: one full GRPO step, a naive transformers pipeline vs longrl.

A random Qwen2.5-VL (3B shape, or ``--tiny``) gets P prompts around F frames of video each (random
pixels; 448x448 frames = 128 tokens per frame, or ``F@T`` for T tokens per frame at a lower
resolution), samples n responses of exactly ``--new-tokens`` tokens per prompt (EOS ignored) and
updates the policy once. Both pipelines do the same work on the same model, reference model and
AdamW optimizer: GRPO with a KL loss term (``--kl-coef``), random rewards (the reward of synthetic
data costs nothing), one optimizer step.

* longrl: the RL trainer's own pieces (``longrl.train.rl``): encode (the vision tower once per
  prompt, its window attention batched: ``longrl.models.vision_attention``), rollout (``longrl.rollout.generate``: all prompts in one call, prefix shared by the
  group; its sampling log-probs are the old log-probs), reference log-probs (one group forward
  per prompt, no grad) and ``policy_update`` (one group forward + backward per prompt, adaptive
  activation checkpointing on GPU, then the optimizer step).
* naive: per prompt, transformers ``generate`` from pixels with ``num_return_sequences=n`` (the
  tower runs inside it, n times; transformers' own attention, one SDPA call per window), the tower once
  more for the training forwards (the same), then per sample
  one reference forward and one forward + backward of [prompt | response] (transformers' decoder
  layers, every layer checkpointed on GPU, the LM head on response tokens only), then the same
  optimizer step. Old log-probs are the detached policy log-probs (on-policy: ratio 1).

One JSON line per frame count: ``naive_s``, ``longrl_s``, ``speedup``, per-phase seconds
(``encode_s``, ``rollout_s``, ``ref_logprobs_s``, ``update_s``, and ``naive_*`` for the naive
pipeline), peak memory of each, and the response tokens each produced. longrl runs twice at each
size: ``longrl_cold_s`` is the first (cuDNN plans of a new length bucket, compiled shapes),
``longrl_s`` the second. ``--longest`` runs longrl alone once per size and ends with one line
naming the largest size that fit (out-of-memory is caught and reported).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import sys
import time
from contextlib import contextmanager
from typing import TypedDict

import torch

from benchmarks.common import device_name, qwen25vl_3b_config, random_model, tiny_bench_config, video_ids
from benchmarks.rollout import hf_generate
from longrl.config import Config
from longrl.infra.guard import NonFiniteGuard
from longrl.infra.metrics import PhaseTimer
from longrl.models.attention import use_longrl_attention
from longrl.models.inputs import Prompt, VisionInputs
from longrl.models.qwen2_5_vl import encode_video, mrope_positions
from longrl.rl.losses import policy_loss
from longrl.rollout import SamplingParams, generate
from longrl.train.group_forward import enable_gradient_checkpointing
from longrl.train.logprobs import sequence_logprobs
from longrl.train.microbatch import accumulation_normalizer
from longrl.train.optim import build_optimizer, build_scheduler
from longrl.train.rl import Group, policy_update, reference_logprobs, step_advantages

FRAME_TOKENS = 128  # a 448x448 frame: 32x32 patches, merged 2x2 -> 256 tokens per 2 frames


class StepTimer(PhaseTimer):
    """PhaseTimer that remembers the phase in progress (to say where a step ran out of memory)."""

    current = ""

    @contextmanager
    def __call__(self, phase: str):
        self.current = phase
        with super().__call__(phase):
            yield


def parse_frames(text: str) -> list[tuple[int, int]]:
    """``"128,512,3600@60"`` -> [(128, 128), (512, 128), (3600, 60)]: frames @ tokens per frame."""
    out = []
    for item in text.split(","):
        frames, _, per_frame = item.strip().partition("@")
        try:
            out.append((int(frames), int(per_frame) if per_frame else FRAME_TOKENS))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--frames item {item!r} is not F or F@TOKENS_PER_FRAME (e.g. 512 or 3600@60)"
            ) from None
    return out


def video_grid(frames: int, tokens_per_frame: int) -> tuple[int, int, int]:
    """(temporal, height, width) in patches of ``frames`` frames at ``tokens_per_frame`` merged tokens
    each: 2 frames per temporal patch, 2x2 patches per token, so height x width = 8 x tokens_per_frame,
    split into the two even factors closest to a square."""
    if frames < 2 or frames % 2:
        raise ValueError(f"--frames {frames}: a video needs an even number of frames >= 2 (2 per temporal patch)")
    area = 8 * tokens_per_frame
    height = next(
        (h for h in range(int(math.isqrt(area)) // 2 * 2, 1, -2) if area % h == 0 and area // h % 2 == 0), None
    )
    if height is None:
        raise ValueError(
            f"--frames ...@{tokens_per_frame}: 8 x {tokens_per_frame} patches per 2 frames has no "
            f"even height x even width; use an even number of tokens per frame"
        )
    return frames // 2, height, area // height


def pixel_prompt(model, frames: int, tokens_per_frame: int, seed: int) -> Prompt:
    """A chat-shaped prompt around a video of random pixels; ``video_embeds`` is left for the encode phase."""
    cfg, vc = model.config, model.config.vision_config
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([video_grid(frames, tokens_per_frame)])
    n_video = int(grid.prod()) // vc.spatial_merge_size**2
    ids = video_ids(cfg, n_video, g)
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    gen = torch.Generator(device=model.device).manual_seed(seed)
    pixels = torch.randn(int(grid.prod()), patch, generator=gen, device=model.device, dtype=model.dtype)
    vision = VisionInputs(pixels, grid, 1.0)
    positions = mrope_positions(model, ids, vision)
    return Prompt(ids.to(model.device), positions.to(model.device), None, vision, int(positions.max()) + 1)


def step_config(n: int, new_tokens: int, kl_coef: float, prefix_tokens: int) -> Config:
    """The RL config of the step: GRPO, one PPO epoch, one mini-batch, a frozen vision tower, and a
    micro-batch budget that holds a whole group (one group forward per prompt)."""
    cfg = Config()
    cfg.rollout.n, cfg.rollout.max_new_tokens = n, new_tokens
    cfg.algorithm.kl_coef = kl_coef
    cfg.model.train_vision = False
    cfg.rl.micro_batch_tokens = prefix_tokens + n * new_tokens
    return cfg


def _rewards(prompts: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for _ in range(prompts)]


class StepMemory(TypedDict, total=False):
    """GPU memory of longrl's step (CUDA only; empty on CPU)."""

    pre_update_peak: int  # bytes: the peak before the update (``measured`` folds it into the step's peak)
    update_start_gb: float  # resident when the update starts
    update_peak_gb: float  # the update's own peak
    plan: dict  # the adaptive checkpointing plan (``plan_summary``), when one was made


def longrl_step(
    model, ref_model, optimizer, scheduler, prompts: list[Prompt], cfg, seed: int, timer: StepTimer | None = None
) -> dict:
    """One RL step as ``train_rl`` runs it (encode, rollout, reference log-probs, advantages, update)."""
    timer = timer or StepTimer()
    model.eval()
    with torch.no_grad():
        with timer("encode"):
            for p in prompts:
                assert p.vision is not None  # the bench's prompts are videos
                p.video_embeds = encode_video(model, p.vision)
        with timer("rollout"):
            params = SamplingParams.from_config(cfg.rollout, seed=seed)  # no stop token: every sample runs to length
            groups = [
                Group(
                    prompt=p,
                    example=None,
                    finished=[False] * len(samples),
                    responses=[torch.tensor(s.token_ids, device=model.device) for s in samples],
                    old_logp=[torch.tensor(s.logprobs, device=model.device) for s in samples],
                )
                for p, samples in zip(prompts, generate(model, prompts, params, config=cfg.rollout))
            ]
    if ref_model is not None:
        with timer("ref_logprobs"):
            reference_logprobs(ref_model, groups, cfg)
    for g, rewards in zip(groups, _rewards(len(groups), cfg.rollout.n, seed)):
        g.rewards = rewards
    advantages, _ = step_advantages(groups, cfg)
    model.train()
    memory: StepMemory = {}
    cuda = model.device.type == "cuda"
    if cuda:  # the update's own peak, and what is resident when it starts
        torch.cuda.synchronize(model.device)
        memory["pre_update_peak"] = torch.cuda.max_memory_allocated(model.device)
        memory["update_start_gb"] = round(torch.cuda.memory_allocated(model.device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(model.device)
    with timer("update"):
        policy_update(model, optimizer, scheduler, groups, advantages, cfg, NonFiniteGuard(), step=1)
    if cuda:
        torch.cuda.synchronize(model.device)
        memory["update_peak_gb"] = round(torch.cuda.max_memory_allocated(model.device) / 2**30, 2)
        plan = getattr(model.model.language_model, "longrl_checkpoint_plan", None)
        if plan is not None:
            memory["plan"] = plan_summary(plan)
    return {"phases": timer.pop(), "tokens": sum(len(r) for g in groups for r in g.responses), "memory": memory}


def plan_summary(plan: dict) -> dict:
    """The adaptive checkpointing plan of the last group forward with grad, in GiB (see
    ``group_forward.checkpoint_flags``)."""
    gb = lambda b: None if b is None else round(b / 2**30, 2)  # noqa: E731
    return dict(
        allocated_gb=gb(plan["allocated"]),
        limit_gb=gb(plan["limit"]),
        available_gb=gb(plan["available"]),
        kept_estimate_gb=gb(plan["kept_estimate"]),
        kept_measured_gb=gb(plan["kept_measured"]),
        **{f"{k}_gb": gb(v) for k, v in plan["budget"].items()},
        planned_checkpointed=plan["planned_checkpointed"],
        checkpointed=plan.get("checkpointed"),
        replanned=plan["replanned"],
    )


def naive_step(
    model,
    ref_model,
    optimizer,
    prompts: list[Prompt],
    cfg,
    seed: int,
    timer: StepTimer | None = None,
    generate_batch: int = 0,
) -> dict:
    """The same step done as plain transformers code would: see the module docstring.
    ``generate_batch``: samples per ``generate`` call (0: all n in one call, as written)."""
    timer = timer or StepTimer()
    n, new_tokens, algo = cfg.rollout.n, cfg.rollout.max_new_tokens, cfg.algorithm
    optimizer.zero_grad(set_to_none=True)
    normalizer = accumulation_normalizer(algo.loss_agg, [new_tokens] * n * len(prompts))
    tokens = 0
    for prompt, rewards in zip(prompts, _rewards(len(prompts), n, seed)):
        model.eval()
        with torch.no_grad():
            with timer("rollout"):  # n samples per generate call, or in calls of generate_batch
                per_call = generate_batch or n
                # (hf_generate runs transformers' own tower, one attention call per window, as written)
                responses = torch.cat(
                    [
                        hf_generate(model, prompt, min(per_call, n - done), new_tokens, greedy=False, video=True)
                        for done in range(0, n, per_call)
                    ]
                )
            with timer("encode"):
                assert prompt.vision is not None  # the bench's prompts are videos
                prompt = dataclasses.replace(
                    prompt, video_embeds=encode_video(model, prompt.vision, batched_attention=False)
                )
        tokens += responses.numel()
        ref: list[torch.Tensor | None] = [None] * n
        if ref_model is not None:
            with timer("ref_logprobs"), torch.no_grad():
                ref = [sequence_logprobs(ref_model, prompt, r)[None] for r in responses]
        advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        model.train()
        with timer("update"):
            for response, adv, ref_logp in zip(responses, advantages.to(model.device), ref):
                logp = sequence_logprobs(model, prompt, response)[None]
                mask = torch.ones_like(logp, dtype=torch.bool)
                loss, _ = policy_loss(
                    logp, logp.detach(), adv[None], mask, algo, normalizer=normalizer, ref_logp=ref_logp
                )
                loss.backward()
    with timer("update"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.rl.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"phases": timer.pop(), "tokens": tokens}


def _free(device: torch.device, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measured(fn, device: torch.device, optimizer) -> dict:
    """``fn(timer)``'s result with its wall seconds and peak GPU memory; out of memory is a result too
    (naming the phase it happened in)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(sync_cuda=device.type == "cuda")
    start = time.perf_counter()
    try:
        out = fn(timer)
    except torch.OutOfMemoryError as error:
        # the allocator's whole first line: it says how much PyTorch holds and how much of that is cached
        message = f"out of memory in {timer.current}: {str(error).splitlines()[0][:600]}"
        _free(device, optimizer)
        return {"error": message}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = max(torch.cuda.max_memory_allocated(device), out.get("memory", {}).pop("pre_update_peak", 0))
        out["peak_mem_gb"] = round(peak / 2**30, 2)
    out["seconds"] = time.perf_counter() - start
    return out


def _phases(result: dict, prefix: str = "") -> dict:
    return {f"{prefix}{k.removeprefix('time/')}_s": round(v, 3) for k, v in result.get("phases", {}).items()}


def run_size(model, ref_model, optimizer, scheduler, frames: int, per_frame: int, args, naive: bool) -> dict:
    device = model.device
    prompts = [pixel_prompt(model, frames, per_frame, seed=i) for i in range(args.prompts)]
    cfg = step_config(args.n, args.new_tokens, args.kl_coef, max(len(p) for p in prompts))
    result = dict(
        frames=frames,
        tokens_per_frame=per_frame,
        prefix_tokens=len(prompts[0]),
        prompts=args.prompts,
        n=args.n,
        new_tokens=args.new_tokens,
        kl_coef=args.kl_coef,
        step_tokens=sum(len(p) for p in prompts) + args.prompts * args.n * args.new_tokens,
    )
    runs = 1 if args.longest else 2  # the first at a new size builds cuDNN plans and compiled shapes
    run = 0
    while run < runs:
        ours = measured(
            lambda t: longrl_step(model, ref_model, optimizer, scheduler, prompts, cfg, seed=run, timer=t),
            device,
            optimizer,
        )
        if "error" in ours and args.checkpointing == "auto" and device.type == "cuda":
            # adaptive checkpointing sized itself from free memory and missed: report it, checkpoint every layer
            result["auto_checkpointing_error"] = ours["error"]
            plan = getattr(model.model.language_model, "longrl_checkpoint_plan", None)
            if plan is not None:
                result["auto_plan"] = plan_summary(plan)
            print(
                f"# F={frames}@{per_frame}: {ours['error']}; retrying with every layer checkpointed",
                file=sys.stderr,
                flush=True,
            )
            args.checkpointing = "all"
            enable_gradient_checkpointing(model, adaptive=False)
            continue
        if "error" in ours:
            return {**result, "longrl_s": None, "error": ours["error"], "checkpointing": args.checkpointing}
        if run == 0 and runs > 1:
            result["longrl_cold_s"] = round(ours["seconds"], 3)
        print(f"# F={frames}@{per_frame}: longrl step {ours['seconds']:.1f} s", file=sys.stderr, flush=True)
        run += 1
    result.update(
        longrl_s=round(ours["seconds"], 3),
        **_phases(ours),
        old_logprobs="from the sampler",
        longrl_tokens=ours["tokens"],
        peak_mem_gb=ours.get("peak_mem_gb"),
        checkpointing=args.checkpointing,
        **ours.get("memory", {}),
    )
    result.update(naive_s=None, speedup=None)
    if naive:
        theirs = measured(
            lambda t: naive_step(
                model, ref_model, optimizer, prompts, cfg, seed=0, timer=t, generate_batch=args.naive_generate_batch
            ),
            device,
            optimizer,
        )
        print(
            f"# F={frames}@{per_frame}: naive step "
            + (f"{theirs['seconds']:.1f} s" if "seconds" in theirs else theirs["error"]),
            file=sys.stderr,
            flush=True,
        )
        if "error" in theirs:
            result["naive_error"] = theirs["error"]
        else:
            if args.naive_generate_batch:
                result["naive_generate_batch"] = args.naive_generate_batch
            result.update(
                naive_s=round(theirs["seconds"], 3),
                speedup=round(theirs["seconds"] / ours["seconds"], 2),
                **_phases(theirs, "naive_"),
                naive_tokens=theirs["tokens"],
                naive_peak_mem_gb=theirs.get("peak_mem_gb"),
            )
    for p in prompts:
        p.video_embeds = None
    return result


def warm_up(model, ref_model, optimizer, scheduler, args, naive: bool) -> float:
    """Compile the decode step, the prefill and the group forward's layers at two small lengths (the
    compiled code turns length-generic, as in a run's first steps), build the optimizer's state."""
    start = time.perf_counter()
    small, per_frame = ([2, 4], args.frames[0][1]) if args.tiny else ([16, 24], FRAME_TOKENS)
    for frames in small:
        prompts = [pixel_prompt(model, frames, per_frame, seed=100 + i) for i in range(min(args.prompts, 2))]
        cfg = step_config(args.n, args.new_tokens, args.kl_coef, max(len(p) for p in prompts))
        longrl_step(model, ref_model, optimizer, scheduler, prompts, cfg, seed=100)
        if naive and frames == small[0]:
            naive_step(model, ref_model, optimizer, prompts[:1], cfg, seed=100)
    _free(model.device, optimizer)
    return round(time.perf_counter() - start, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="longrl bench step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (CPU smoke runs)")
    ap.add_argument(
        "--frames",
        type=parse_frames,
        default=parse_frames("128"),
        help="video frames, comma list; F@T for T tokens per frame (default 128: 448x448 frames)",
    )
    ap.add_argument("--prompts", type=int, default=2, help="prompts (videos) per step")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (the group size)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens per sample, EOS ignored")
    ap.add_argument("--kl-coef", type=float, default=0.01, help="KL loss weight; 0 drops the reference model")
    ap.add_argument(
        "--checkpointing",
        choices=["auto", "all"],
        default="auto",
        help="GPU activation checkpointing of longrl's group forward: auto (as many layers as free memory "
        "needs; on out of memory the step is retried with all) or all (every layer)",
    )
    ap.add_argument("--no-naive", action="store_true", help="time longrl only (the naive pipeline may not fit)")
    ap.add_argument(
        "--naive-generate-batch",
        type=int,
        default=0,
        metavar="B",
        help="the naive pipeline samples the n responses in generate calls of B sequences each "
        "(num_return_sequences=B), as a transformers user does when n at once does not fit; "
        "0 (default): all n in one call",
    )
    ap.add_argument(
        "--longest",
        action="store_true",
        help="longrl only, one step per --frames size (out of memory caught), then a line naming the "
        "largest size that fit",
    )
    args = ap.parse_args(argv)
    if args.naive_generate_batch < 0:
        ap.error(f"--naive-generate-batch must be >= 0, got {args.naive_generate_batch}")
    for name in ("prompts", "n", "new_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for frames, per_frame in args.frames:
        try:
            video_grid(frames, per_frame)
        except ValueError as error:
            ap.error(str(error))
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(tiny_bench_config() if args.tiny else qwen25vl_3b_config(), device=device, dtype=dtype)
    use_longrl_attention(model.config.text_config)
    model.model.visual.requires_grad_(False)  # frozen tower (cfg.model.train_vision = False)
    if device.type == "cuda":  # longrl keeps what fits (auto) or checkpoints all; naive checkpoints all
        enable_gradient_checkpointing(model, adaptive=args.checkpointing == "auto")
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    optim_cfg = Config().rl.optim
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=1_000_000)
    naive = not (args.no_naive or args.longest)
    common = dict(
        device=device.type,
        gpu=device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        model="tiny" if args.tiny else "qwen2.5-vl-3b-shape",
        torch=torch.__version__,
        vision_tower="frozen",
        warmup_s=warm_up(model, ref_model, optimizer, scheduler, args, naive),
    )
    results = []
    for frames, per_frame in args.frames:
        result = {**run_size(model, ref_model, optimizer, scheduler, frames, per_frame, args, naive), **common}
        _free(device, optimizer)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.longest:
        fits = [r for r in results if r.get("longrl_s") is not None]
        best = max(fits, key=lambda r: (r["frames"], r["step_tokens"]), default=None)
        summary = dict(
            longest_frames=best and best["frames"],
            longest_tokens_per_frame=best and best["tokens_per_frame"],
            longest_step_tokens=best and best["step_tokens"],
            longest_step_s=best and best["longrl_s"],
            longest_peak_mem_gb=best and best["peak_mem_gb"],
            tried={
                f"{r['frames']}@{r['tokens_per_frame']}": "fits" if r.get("longrl_s") is not None else r.get("error")
                for r in results
            },
            **common,
        )
        print(json.dumps(summary), flush=True)
        results.append(summary)
    return results


if __name__ == "__main__":
    main()
