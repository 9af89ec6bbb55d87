"""``longrl bench train``: one GRPO group's forward + backward, per sample (naive) vs longrl's group forward.

A random Qwen2.5-VL (3B shape, or ``--tiny``) gets a prompt of F frames of video (448x448 frames:
F/2 temporal groups x 16x16 merged patches = 128*F video tokens, random embeddings as if read
from the embedding cache) and N random responses of R tokens. Both variants compute the same
loss (a token mean of advantage-weighted response log-probs) on the same weights and tokens:

* naive: N separate sequences [prompt | response_i], each forward + backward (gradients summed),
* longrl: one packed group forward ``[prompt | r1 | ... | rN]`` + backward, through ``group_logprobs``
  exactly as the RL trainer calls it (compiled fused decoder layers on GPU, adaptive checkpointing).

The naive baseline runs transformers' own decoder layers, every layer checkpointed on GPU.

Prints one JSON line per configuration (comma lists in --frames/--n/--response-tokens run the
cross product in one process): times, speedup, MFU, peak memory and the gradient difference.
MFU counts model FLOPs only (6 x linear weights x tokens, the LM head on response tokens, and the
attention pairs the layout actually allows, x3 for forward + backward; no recomputation) against
the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from benchmarks.common import qwen25vl_3b_config, random_model, tiny_bench_config, video_ids
from longrl.models.attention import use_longrl_attention
from longrl.models.inputs import Prompt, VisionInputs
from longrl.train.group_forward import enable_gradient_checkpointing
from longrl.train.logprobs import group_logprobs, sequence_logprobs

T = TypeVar("T")

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
FRAME_TOKENS = 128  # a 448x448 frame: 32x32 patches, merged 2x2 -> 256 tokens per 2 frames


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype):
    config = tiny_bench_config() if tiny else qwen25vl_3b_config()
    model = random_model(config, device=device, dtype=dtype)
    use_longrl_attention(model.config.text_config)
    model.model.visual.requires_grad_(False)  # frozen tower: embeddings come from the cache
    return model


def video_prompt(model, frames: int, seed: int = 0) -> Prompt:
    """A chat-shaped prompt around ``frames`` frames of video, with random video embeddings."""
    cfg = model.config
    device = model.device
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor([[max(frames // 2, 1), 32, 32]])
    n_video = int(grid.prod()) // 4
    ids = video_ids(cfg, n_video, g)
    mm_type = (ids == cfg.video_token_id).int() * 2
    positions, _ = model.model.get_rope_index(
        ids[None], mm_token_type_ids=mm_type[None], video_grid_thw=grid, second_per_grid_ts=torch.tensor([1.0])
    )
    hidden = cfg.text_config.hidden_size
    embeds = (torch.randn(n_video, hidden, generator=g) * 0.02).to(device=device, dtype=model.dtype)
    vision = VisionInputs(torch.empty(0, 3 * 2 * 14 * 14), grid, 1.0)
    return Prompt(ids.to(device), positions[:, 0].to(device), embeds, vision, int(positions.max()) + 1)


def group_flops(text_cfg, prefix: int, lens: list[int]) -> float:
    """Model FLOPs of forward + backward of the group layout (see the module docstring)."""
    d, layers, inter = text_cfg.hidden_size, text_cfg.num_hidden_layers, text_cfg.intermediate_size
    hq, hkv = text_cfg.num_attention_heads, text_cfg.num_key_value_heads
    hd = d // hq
    linear_per_token = 2 * layers * (2 * d * hq * hd + 2 * d * hkv * hd + 3 * d * inter)
    pairs = prefix * (prefix + 1) / 2 + sum(r * prefix + r * (r + 1) / 2 for r in lens)
    attention = layers * 4 * hq * hd * pairs
    head = 2 * d * text_cfg.vocab_size * sum(lens)
    return 3 * (linear_per_token * (prefix + sum(lens)) + attention + head)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loss_weights(n: int, length: int, device, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(n, generator=g)
    return [torch.full((length,), float(a) / (n * length), device=device) for a in adv]


def run_naive(model, prompt, responses, weights) -> list[torch.Tensor]:
    logps = []
    for r, w in zip(responses, weights):
        logp = sequence_logprobs(model, prompt, r)
        (-(w * logp).sum()).backward()
        logps.append(logp.detach())
    return logps


def run_longrl(model, prompt, responses, weights, backend, layers="auto") -> tuple[list[torch.Tensor], dict]:
    out = group_logprobs(model, prompt, responses, backend=backend, layers=layers)
    (-sum((w * lp).sum() for w, lp in zip(weights, out.logprobs))).backward()
    return [lp.detach() for lp in out.logprobs], out.info


def timed(fn: Callable[[], T], device) -> tuple[float, T]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def take_grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None
    return out


def grad_difference(grads: dict, ref: dict) -> dict:
    diff = sq_diff = sq_ref = 0.0
    for name, r in ref.items():
        r = r.to(grads[name].device).float()
        delta = grads[name].float() - r
        diff = max(diff, delta.abs().max().item())
        sq_diff += delta.square().sum().item()
        sq_ref += r.square().sum().item()
    return {
        "max_grad_diff": diff,
        "grad_rel_diff": (sq_diff / max(sq_ref, 1e-30)) ** 0.5,
        "max_grad": max(r.abs().max().item() for r in ref.values()),
    }


def profile_table(fn, device, rows: int = 12) -> str:
    """Top kernels by device time of one ``fn()`` call, as a compact text table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0] if device.type == "cuda" else []
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.self_device_time_total for e in events) or 1.0
    lines = [f"{'kernel / op':70s} {'ms':>8s} {'%':>5s} {'calls':>6s}"]
    for e in [e for e in events if e.self_device_time_total > 0][:rows]:
        lines.append(
            f"{e.key[:70]:70s} {e.self_device_time_total / 1e3:8.1f} "
            f"{100 * e.self_device_time_total / total:5.1f} {e.count:6d}"
        )
    return "\n".join(lines)


def bench_config(
    model,
    device,
    frames: int,
    n: int,
    length: int,
    *,
    backends: list[str],
    repeats: int,
    naive: bool,
    peak: float | None,
    profile: bool = False,
    layer_impls: tuple[str, ...] = ("auto",),
    vary_shapes: bool = False,
) -> list[dict]:
    """One JSON-able result per (backend, layer implementation); the naive baseline runs once and is shared."""
    prompt = video_prompt(model, frames)
    g = torch.Generator().manual_seed(2)
    vocab = model.config.text_config.vocab_size
    responses = [torch.randint(0, vocab, (length,), generator=g).to(device) for _ in range(n)]
    weights = _loss_weights(n, length, device)
    flops = group_flops(model.config.text_config, len(prompt), [length] * n)
    naive_flops = n * group_flops(model.config.text_config, len(prompt), [length])
    cuda = device.type == "cuda"
    common = {
        "device": device.type,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "dtype": str(model.dtype).removeprefix("torch."),
        "frames": frames,
        "n": n,
        "response_tokens": length,
        "prefix_tokens": len(prompt),
        "packed_tokens": len(prompt) + n * length,
    }

    naive_result: dict[str, Any] = {"naive_s": None, "speedup": None}
    naive_logps: list[torch.Tensor] | None = None
    naive_grads: dict[str, torch.Tensor] | None = None
    if naive:
        try:
            run_naive(model, prompt, responses[:1], weights[:1])  # warm-up: one sample
            take_grads(model)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, naive_logps = timed(lambda: run_naive(model, prompt, responses, weights), device)
            naive_grads = {k: v.cpu() for k, v in take_grads(model).items()}  # off the GPU: no effect on peaks
            naive_result = {"naive_s": seconds, "naive_mfu": naive_flops / seconds / peak if peak else None}
            if cuda:
                naive_result["naive_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            take_grads(model)
            naive_result = {"naive_s": None, "naive_error": "out of memory"}

    results = []
    for backend, layers in itertools.product(backends, layer_impls):
        result = {**common, "backend": backend, **naive_result}
        run = lambda: run_longrl(model, prompt, responses, weights, backend, layers)  # noqa: E731
        try:  # warm up (compiles flex_attention and the layer functions for this shape), then the median
            run()
            take_grads(model)
            if vary_shapes:  # a group of another length: the compiled code turns dynamic, as in training
                run_longrl(
                    model, prompt, [r[:-1] for r in responses], _loss_weights(n, length - 1, device), backend, layers
                )
                take_grads(model)
            times = []
            for _ in range(repeats):
                # drop the previous repeat's gradients first: kept, they would take 6 GB (3B) from the timed
                # run, shrinking what adaptive checkpointing may keep and inflating the peak
                grads = None
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                seconds, (logps, info) = timed(run, device)
                times.append(seconds)
                grads = take_grads(model)
        except Exception as err:  # report and go on with the other backends / configurations
            take_grads(model)
            result.update(longrl_s=None, error=f"{type(err).__name__}: {err}"[:400])
            results.append(result)
            continue
        result["longrl_s"] = statistics.median(times)
        result.update(layers=info.get("layers"), checkpointed_layers=info.get("checkpointed_layers"))
        if profile:
            print(
                f"# profile: {backend}, {info.get('layers')} layers, F={frames} n={n} R={length}\n"
                + profile_table(lambda: (run(), take_grads(model)), device),
                flush=True,
            )
        if cuda:
            result["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["tflops"] = flops / result["longrl_s"] / 1e12
        result["mfu"] = flops / result["longrl_s"] / peak if peak else None
        if naive_grads is not None:
            assert naive_logps is not None and grads is not None  # the naive run and the repeats (>= 1) ran
            result["speedup"] = result["naive_s"] / result["longrl_s"]
            result["max_logprob_diff"] = max((a - b).abs().max().item() for a, b in zip(logps, naive_logps))
            result.update(grad_difference(grads, naive_grads))
        del grads
        results.append(result)
    return results


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _layer_counts(text: str) -> list[str | int]:
    return [x if x in ("auto", "all") else int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="longrl bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Qwen2.5-VL instead of the 3B shape")
    parser.add_argument("--frames", type=_ints, default=[128], help="frames of 448x448 video (comma list)")
    parser.add_argument("--n", type=_ints, default=[8], help="responses per group (comma list)")
    parser.add_argument("--response-tokens", type=_ints, default=[128], help="tokens per response (comma list)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="group attention: auto (hybrid on GPU, dense on CPU), dense, hybrid, split; comma list",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument(
        "--layers",
        default="auto",
        help="decoder layers of the group forward: auto (compiled on GPU, eager on CPU), compiled, "
        "eager, hf (transformers' own); comma list",
    )
    parser.add_argument(
        "--checkpoint-layers",
        type=_layer_counts,
        default=["auto"],
        help="gradient checkpointing: auto (default: every layer may be checkpointed, the group forward "
        "checkpoints only as many as free GPU memory needs, as in training), all (every layer), "
        "or K (exactly the first K); a comma list such as auto,all,10 runs each "
        "(naive only with the first)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="F,N,R",
        help="a (frames, n, response tokens) configuration; repeatable; replaces the lists",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-naive", action="store_true", help="time longrl only (naive may not fit)")
    parser.add_argument(
        "--naive-max-frames",
        type=int,
        default=256,
        help="skip the naive baseline above this many frames (it takes n full passes)",
    )
    parser.add_argument("--no-grad-checkpointing", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of one longrl run per backend")
    parser.add_argument(
        "--vary-shapes",
        action="store_true",
        help="warm up on a second group length too, so the timed runs use the dynamic-shape "
        "compiled code that training (groups of varying length) runs",
    )
    parser.add_argument(
        "--hold-gb",
        type=float,
        default=0.0,
        help="hold this much GPU memory during the runs, standing for optimizer state / a "
        "reference model (adaptive checkpointing then keeps fewer layers)",
    )
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense bf16 peak for MFU (default: by GPU name)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    dtype = {
        "auto": torch.float32 if device.type == "cpu" else torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
    }[args.dtype]
    model = build_model(args.tiny, device, dtype)
    model.train()
    held = torch.empty(int(args.hold_gb * 2**30), dtype=torch.uint8, device=device) if args.hold_gb else None
    peak = args.peak_tflops * 1e12 or None
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    backends = [b if b != "auto" else ("hybrid" if device.type == "cuda" else "dense") for b in args.backend.split(",")]
    for b in backends:
        if b not in ("dense", "hybrid", "split"):
            parser.error(f"--backend {b!r} is not one of auto, dense, hybrid, split")

    results = []
    configs = (
        [tuple(_ints(c)) for c in args.config]
        if args.config
        else list(itertools.product(args.frames, args.n, args.response_tokens))
    )
    checkpointing = device.type == "cuda" and not args.no_grad_checkpointing
    layers = model.config.text_config.num_hidden_layers
    layer_impls = tuple(args.layers.split(","))
    for impl in layer_impls:
        if impl not in ("auto", "compiled", "eager", "hf"):
            parser.error(f"--layers {impl!r} is not one of auto, compiled, eager, hf")
    for variant, ckpt_layers in enumerate(args.checkpoint_layers if checkpointing else [0]):
        if checkpointing:
            enable_gradient_checkpointing(
                model, None if isinstance(ckpt_layers, str) else ckpt_layers, adaptive=ckpt_layers == "auto"
            )
        for frames, n, length in configs:
            naive = not args.no_naive and frames <= args.naive_max_frames and variant == 0
            for result in bench_config(
                model,
                device,
                frames,
                n,
                length,
                backends=backends,
                repeats=args.repeats,
                naive=naive,
                peak=peak,
                profile=args.profile and variant == 0,
                layer_impls=layer_impls,
                vary_shapes=args.vary_shapes,
            ):
                result["model"] = "tiny" if args.tiny else "qwen2.5-vl-3b-shape"
                result["checkpointing"] = ckpt_layers if checkpointing else "off"
                result["decoder_layers"] = layers
                if held is not None:
                    result["held_gb"] = args.hold_gb
                if args.vary_shapes:
                    result["vary_shapes"] = True
                print(
                    json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in result.items()}),
                    flush=True,
                )
                results.append(result)
    return results


if __name__ == "__main__":
    main()
