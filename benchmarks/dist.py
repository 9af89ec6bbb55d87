"""``torchrun --nproc-per-node N -m longrl bench train|rollout ...``: the benchmarks over a dp x sp mesh.

Started under torchrun (WORLD_SIZE > 1), ``longrl bench train`` and ``longrl bench rollout`` run
this instead of the single-GPU comparison with transformers: the random Qwen2.5-VL (3B shape, or
``--tiny``) is parallelized as ``longrl train rl`` does it (``longrl.dist.parallelize``: Ulysses
and the frame-sharded tower over ``--sp`` ranks, FSDP2 over all ranks), and every dp slot runs

* train: one GRPO group's forward + backward (``group_logprobs``, as the RL update calls it) of a
  prompt of F frames (random video embeddings, as from the embedding cache) and N responses of R
  tokens, the packed ``[prefix | r1 ... rN]`` sharded by tokens over its sp ranks;
* rollout: ``generate`` of N samples of T tokens (EOS ignored) per prompt, parameters gathered for
  the call (``gathered``), the prefill sharded by tokens, decode per ``--sp-decode``.

Each rank measures its peak memory (CUDA: allocated; CPU: the process's resident set, VmHWM reset
per configuration) and its tokens/s; rank 0 prints one JSON line per configuration with every
rank's figures, and with ``--longest`` a last line naming the largest frame count that fit (sizes
run in increasing order; one stops the search when a rank ran out of memory or went over
``--max-mem-gb``). An out-of-memory error inside a collective can leave the other ranks waiting:
on GPUs give ``--max-mem-gb`` a margin below the card so the search stops before that.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
import torch.distributed as dist

from benchmarks.common import device_name, qwen25vl_3b_config, random_model, tiny_bench_config
from longrl.dist import DistConfig, gathered, init_distributed, parallelize, shutdown
from longrl.models.attention import use_longrl_attention


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(which: str, argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"torchrun ... -m longrl bench {which}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (CPU smoke runs)")
    ap.add_argument("--sp", type=int, default=1, help="sequence-parallel ranks per group (dist.sp); dp = world / sp")
    ap.add_argument("--sp-decode", choices=["gathered", "sharded"], default="gathered", help="dist.sp_decode")
    ap.add_argument("--frames", type=_ints, default=[128], help="video frames at 448x448 (comma list, ascending)")
    # --samples: torchrun reads an abbreviated "--n" after the script as one of its own options (--nnodes ...)
    ap.add_argument("--samples", "--n", dest="n", type=int, default=8, help="responses (samples) per prompt")
    if which == "train":
        ap.add_argument("--response-tokens", type=int, default=128, help="tokens per response")
    else:
        ap.add_argument("--new-tokens", type=int, default=128, help="new tokens per sample, EOS ignored")
        ap.add_argument("--prompts", type=int, default=1, help="videos per generate call on each dp rank")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (after one warm-up)")
    ap.add_argument("--longest", action="store_true", help="end with a line naming the largest --frames that fit")
    ap.add_argument(
        "--max-mem-gb",
        type=float,
        default=0.0,
        help="a size fits only if every rank's peak memory stays below this (0: no limit)",
    )
    args = ap.parse_args(argv)
    if any(b <= a for a, b in zip(args.frames, args.frames[1:])):
        ap.error("--frames must be ascending (the --longest search stops at the first size that does not fit)")
    return args


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # "5" resets the process's peak resident set (VmHWM) to the current one (Linux)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _train_once(model, frames: int, args, device):
    """One group forward + backward; returns (seconds, tokens this rank's sp group processed)."""
    from benchmarks.train import _loss_weights, run_longrl, video_prompt

    prompt = video_prompt(model, frames)
    g = torch.Generator().manual_seed(2)
    vocab = model.config.text_config.vocab_size
    responses = [torch.randint(0, vocab, (args.response_tokens,), generator=g).to(device) for _ in range(args.n)]
    weights = _loss_weights(args.n, args.response_tokens, device)
    backend = "hybrid" if device.type == "cuda" else "dense"
    start = _sync(device)
    run_longrl(model, prompt, responses, weights, backend)
    seconds = _sync(device) - start
    for p in model.parameters():
        p.grad = None
    return seconds, len(prompt) + args.n * args.response_tokens, len(prompt)


def _rollout_once(model, frames: int, args, device):
    from benchmarks.rollout import video_prompt
    from longrl.rollout import RolloutConfig, SamplingParams, generate

    prompts = [video_prompt(model, frames, seed=i) for i in range(args.prompts)]
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    with gathered(model):  # as the RL loop runs rollout: every FSDP2 unit unsharded for the call
        start = _sync(device)
        out = generate(model, prompts, params, config=RolloutConfig())
        seconds = _sync(device) - start
    tokens = sum(len(s.token_ids) for group in out for s in group)
    return seconds, tokens, len(prompts[0])


def run_size(which: str, model, frames: int, args, env) -> dict:
    """Every rank's figures at ``frames`` (on rank 0; None elsewhere)."""
    device = env.device
    once = _train_once if which == "train" else _rollout_once
    mine: dict = {"rank": env.rank, "dp_rank": env.dp_rank}
    try:
        _reset_peak(device)
        once(model, frames, args, device)  # warm-up (compiled shapes, cuDNN plans)
        times = []
        for _ in range(args.repeats):
            seconds, tokens, prefix = once(model, frames, args, device)
            times.append(seconds)
        step_s = statistics.median(times)
        mine.update(
            step_s=round(step_s, 4),
            tok_s=round(tokens / step_s, 1),
            tokens=tokens,
            prefix_tokens=prefix,
            peak_mem_gb=round(_peak_gb(device), 3),
        )
    except torch.OutOfMemoryError as error:
        mine["error"] = f"out of memory: {str(error).splitlines()[0][:160]}"
        for p in model.parameters():
            p.grad = None
    ranks: list = [None] * env.world_size
    dist.all_gather_object(ranks, mine)
    ok = all("error" not in r for r in ranks)
    result = dict(bench=which, frames=frames, n=args.n, world=env.world_size, dp=env.dp_size, sp=env.config.sp)
    if which == "train":
        result["response_tokens"] = args.response_tokens
    else:
        result.update(new_tokens=args.new_tokens, prompts_per_dp_rank=args.prompts, sp_decode=args.sp_decode)
    if ok:
        slowest = max(r["step_s"] for r in ranks)
        # one dp slot's sp ranks process the same tokens: count them once per dp slot
        tokens = sum(r["tokens"] for r in ranks if r["rank"] % env.config.sp == 0)
        result.update(
            prefix_tokens=ranks[0]["prefix_tokens"],
            step_s=slowest,
            tok_s=round(tokens / slowest, 1),
            peak_mem_gb=max(r["peak_mem_gb"] for r in ranks),
        )
        result["fits"] = not (args.max_mem_gb and result["peak_mem_gb"] > args.max_mem_gb)
    else:
        result.update(fits=False, error=next(r["error"] for r in ranks if "error" in r))
    result["ranks"] = ranks
    return result


def main(which: str, argv: list[str] | None = None) -> list[dict]:
    args = parse_args(which, argv)
    env = init_distributed(DistConfig(sp=args.sp, sp_decode=args.sp_decode), args.device)
    device = env.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(tiny_bench_config() if args.tiny else qwen25vl_3b_config(), device=device, dtype=dtype)
    use_longrl_attention(model.config.text_config)
    model.model.visual.requires_grad_(False)  # frozen tower: the prompts carry cached embeddings
    if which == "train":
        model.train()
        if device.type == "cuda":
            from longrl.train.group_forward import enable_gradient_checkpointing

            enable_gradient_checkpointing(model, adaptive=True)
    else:
        model.eval().requires_grad_(False)
    parallelize(model, env.mesh, env.config)
    common = dict(
        device=device.type,
        gpu=device_name(device),
        dtype=str(dtype).removeprefix("torch."),
        model="tiny" if args.tiny else "qwen2.5-vl-3b-shape",
        torch=torch.__version__,
    )
    results = []
    grad = torch.enable_grad() if which == "train" else torch.no_grad()
    with grad:
        for frames in args.frames:
            result = {**run_size(which, model, frames, args, env), **common}
            if env.is_main:
                print(json.dumps(result), flush=True)
            results.append(result)
            if args.longest and not result["fits"]:
                break
    if args.longest:
        fit = [r for r in results if r["fits"]]
        best = fit[-1] if fit else None
        summary = dict(
            bench=which,
            longest_frames=best and best["frames"],
            longest_step_s=best and best["step_s"],
            longest_peak_mem_gb=best and best["peak_mem_gb"],
            world=env.world_size,
            dp=env.dp_size,
            sp=env.config.sp,
            tried={r["frames"]: "fits" if r["fits"] else r.get("error", "over --max-mem-gb") for r in results},
            **common,
        )
        if env.is_main:
            print(json.dumps(summary), flush=True)
        results.append(summary)
    shutdown()
    return results
