"""``longrl bench gen``: Flow-GRPO's two phases on Stable Diffusion 3.5 Medium's or Wan 2.1 1.3B's shape, random weights.

Sampling: ``--prompts`` x ``--n`` images at ``--resolution`` px, ``--steps`` SDE steps with
classifier-free guidance and every transition's log-prob recorded (``longrl.gen.sampler.sample``),
against diffusers' own ``StableDiffusion3Pipeline.__call__`` on the same text embeddings and steps
(the ODE, no log-probs; ``WanPipeline.__call__`` for ``--model wan``, clips of ``--frames``) in the same run: ``sample_speedup`` is the pipeline's time over ours, so
1.0 means the log-probs cost nothing. One training step: ``longrl.gen.update.policy_update`` over
``--train-timesteps`` of the sampled transitions (micro-batches of ``--micro-batch``, AdamW), with
the KL to a frozen reference when ``--kl`` > 0. Images per second for both, one JSON line.

Text embeddings are random (in a run they are computed once per prompt and cached; the text
encoders, T5-XXL / UMT5-XXL among them, are not what a step costs). The VAE is the family's shape,
random, and decodes the samples inside the timed sampling. ``--tiny`` runs the tiny test pipeline
(CPU smoke).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import device_name
from longrl.gen.config import GenConfig
from longrl.gen.models import Cond, FlowPolicy, tiny_sd3_pipeline, tiny_wan_pipeline
from longrl.gen.sampler import sample
from longrl.gen.update import Reference, policy_update
from longrl.infra.guard import NonFiniteGuard


def sd35_medium_pipeline(resolution: int):
    """StableDiffusion3Pipeline with SD3.5 Medium's transformer and SD3's VAE (their published
    configs), random weights, no text encoders (embeddings are given)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        sample_size=resolution, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False,
    )  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip


def wan_1_3b_pipeline():
    """WanPipeline with Wan 2.1 T2V 1.3B's transformer and Wan 2.1's VAE (their published configs; the
    VAE's defaults are Wan 2.1's), random weights, no text encoder (embeddings are given)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    )  # fmt: skip
    return WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=AutoencoderKLWan(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip


def random_cond(policy: FlowPolicy, batch: int, text_tokens: int, device, dtype, seed: int = 0) -> Cond:
    """Random text conditioning of the transformer's widths ([B, L, joint_dim], pooled [B, P]) with a
    negative prompt's, as ``FlowPolicy.cond`` gives for CFG."""
    cfg = policy.transformer.config
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    if policy.kind == "wan":
        return Cond(draw(batch, text_tokens, cfg.text_dim), None, draw(batch, text_tokens, cfg.text_dim), None)
    embeds, pooled = draw(batch, text_tokens, cfg.joint_attention_dim), draw(batch, cfg.pooled_projection_dim)
    return Cond(
        embeds, pooled, draw(batch, text_tokens, cfg.joint_attention_dim), draw(batch, cfg.pooled_projection_dim)
    )


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    wan = args.model == "wan"
    frames = args.frames if wan else 1
    if args.tiny:
        pipe = tiny_wan_pipeline(0, args.resolution, frames) if wan else tiny_sd3_pipeline(0, args.resolution)
    else:
        pipe = wan_1_3b_pipeline() if wan else sd35_medium_pipeline(args.resolution)
    pipe.to(device)
    pipe.transformer.to(dtype)
    pipe.vae.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.grad_ckpt:
        pipe.transformer.enable_gradient_checkpointing()
    policy = FlowPolicy(pipe, args.model, resolution=args.resolution, frames=frames)
    batch = args.prompts * args.n
    text_tokens = args.text_tokens or (512 if wan else 333)
    cond = random_cond(policy, batch, text_tokens, device, dtype)
    gen = GenConfig(
        resolution=args.resolution, frames=frames, num_steps=args.steps, train_timesteps=args.train_timesteps,
        n=args.n, prompts_per_step=args.prompts, mini_batches=1, micro_batch=args.micro_batch, kl_coef=args.kl,
        guidance_scale=args.guidance,
    )  # fmt: skip

    def ours():
        traj = sample(policy, cond, num_steps=args.steps, noise_level=gen.noise_level,
                      guidance_scale=args.guidance, generator=torch.Generator().manual_seed(1))  # fmt: skip
        return traj, policy.decode(traj.final)

    def diffusers_call():
        if wan:
            return pipe(
                prompt_embeds=cond.embeds, negative_prompt_embeds=cond.neg_embeds, num_inference_steps=args.steps,
                guidance_scale=args.guidance, height=args.resolution, width=args.resolution, num_frames=frames,
                output_type="np", generator=torch.Generator().manual_seed(1),
            )  # fmt: skip
        return pipe(
            prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, negative_prompt_embeds=cond.neg_embeds,
            negative_pooled_prompt_embeds=cond.neg_pooled, num_inference_steps=args.steps,
            guidance_scale=args.guidance, height=args.resolution, width=args.resolution, output_type="np",
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip

    with torch.no_grad():
        for _ in range(args.warmup):
            ours(), diffusers_call()
        (traj, _), sample_s = timed(ours, device)
        _, diffusers_s = timed(diffusers_call, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    params = [p for p in policy.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    reference = Reference(policy, lora=False) if args.kl > 0 else None
    advantages = torch.randn(batch, generator=torch.Generator().manual_seed(2)).to(device)
    guard = NonFiniteGuard(max_consecutive=5)

    def train_step():
        return policy_update(
            policy,
            traj,
            cond,
            advantages,
            gen,
            optimizer,
            params,
            grad_clip=1.0,
            guard=guard,
            step=1,
            reference=reference,
        )

    for _ in range(args.warmup):
        train_step()
    stats, train_s = timed(train_step, device)
    return {
        "model": ("tiny-" + args.model) if args.tiny else ("wan2.1-1.3b-shape" if wan else "sd3.5-medium-shape"),
        "resolution": args.resolution,
        "frames": frames,
        "text_tokens": text_tokens,
        "grad_ckpt": args.grad_ckpt,
        "prompts": args.prompts,
        "n": args.n,
        "steps": args.steps,
        "train_timesteps": args.train_timesteps,
        "guidance": args.guidance,
        "kl": args.kl,
        "sample_s": round(sample_s, 3),
        "sample_images_s": round(batch / sample_s, 2),  # images, or clips of `frames` for wan
        "diffusers_s": round(diffusers_s, 3),
        "diffusers_images_s": round(batch / diffusers_s, 2),
        "sample_speedup": round(diffusers_s / sample_s, 3),
        "train_step_s": round(train_s, 3),
        "train_images_s": round(batch / train_s, 2),
        "train_clip_frac": round(float(stats.get("clip_frac", 0.0)), 4),
        "peak_train_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "transformer_params_m": round(sum(p.numel() for p in policy.transformer.parameters()) / 1e6, 1),
        "device": device.type,
        "gpu": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="longrl bench gen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=["sd3", "wan"], default="sd3", help="SD3.5 Medium's or Wan 2.1 1.3B's shape")
    ap.add_argument("--tiny", action="store_true", help="the tiny test pipeline (CPU smoke runs)")
    ap.add_argument("--frames", type=int, default=33, help="frames per clip (--model wan): 1 + 4k")
    ap.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in the transformer")
    ap.add_argument("--resolution", type=int, default=512, help="image side in pixels (Flow-GRPO trains SD3.5 at 512)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (one GRPO group)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps of the rollout (Flow-GRPO: 10)")
    ap.add_argument("--train-timesteps", type=int, default=5, help="transitions trained per step")
    ap.add_argument("--micro-batch", type=int, default=8, help="samples per transformer forward in training")
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--kl", type=float, default=0.04, help="KL coefficient (0: no reference forward)")
    ap.add_argument("--text-tokens", type=int, default=0, help="text embedding length; 0 = SD3's 333, Wan's 512")
    ap.add_argument("--warmup", type=int, default=1)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    result = run(parse_args(argv))
    print(json.dumps(result), flush=True)
    return result
