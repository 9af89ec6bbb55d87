"""Flow-matching text-to-image/video models through diffusers: load one, or build a tiny random one.

``model.name``: ``tiny`` (a random pipeline built here, tiny text encoders, a word-level tokenizer
and a small VAE, so tests and the quickstart need no hub), a local diffusers directory, or a hub id.
``model.kind`` picks the family: ``sd3`` (``StableDiffusion3Pipeline``, SD3 and SD3.5) or ``wan``
(``WanPipeline``, Wan 2.1 text to video). A family is driven through :class:`FlowPolicy`, which
knows how to call its transformer and decode its latents; the sampler and the loss see only that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# Words of the synthetic prompts (data.py) plus a few spare ones; anything else maps to <unk>.
TINY_WORDS = (
    "a an the of in on at with and photo painting drawing picture render sketch image of "
    "red green blue yellow white black orange purple pink brown grey golden silver "
    "cat dog horse bird car boat house tree flower apple cup chair lamp book clock mountain river "
    "city forest beach field street room garden sky sea lake bridge tower castle "
    "small large old new bright dark quiet busy tall round shiny wooden glass stone"
).split()
TINY_MAX_TOKENS = 16  # text tokens per encoder: short prompts, a short joint sequence


def tiny_tokenizer(max_length: int = TINY_MAX_TOKENS):
    """A word-level tokenizer with <bos> ... <eos> around each prompt (CLIP pools at <eos>)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<unk>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *TINY_WORDS]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_sd3_pipeline(seed: int = 0, resolution: int = 32):
    """A random Stable Diffusion 3 pipeline small enough to train on a CPU in minutes: two CLIP text
    encoders (hidden 32), a T5 encoder (d_model 64), a 4-block VAE (8x down, 4 latent channels) and
    a 2-layer MMDiT over (resolution/8)^2 latent tokens."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    clip: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=32, max_position_embeddings=TINY_MAX_TOKENS, bos_token_id=1, eos_token_id=3, pad_token_id=0,
        hidden_act="gelu",
    )  # fmt: skip
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    t5 = T5EncoderModel(
        T5Config(vocab_size=vocab, d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0,
                 eos_token_id=3)
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4, sample_size=resolution, shift_factor=0.0, scaling_factor=1.0,
        use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    latent = resolution // 8
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=max(latent, 8),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    modules: list[Any] = [text_encoder, text_encoder_2, t5, vae, transformer]
    for module in modules:
        module.eval()  # built, not loaded: still in training mode, and T5's dropout would make embeddings random
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=tokenizer,
    )  # fmt: skip


def tiny_wan_pipeline(seed: int = 0, resolution: int = 32, frames: int = 5, vae_fit_steps: int = 0):
    """A random Wan 2.1 text-to-video pipeline for a CPU: a 1-layer UMT5 text encoder (d_model 32), a
    Wan VAE with 4 latent channels (8x down in space, 4x in time: ``frames`` = 1 + 4k keep 1 + k) and
    a 2-layer Wan transformer over (1 + k) x (resolution/16)^2 latent patches (patch 1 x 2 x 2).
    ``vae_fit_steps`` > 0 fits the VAE's decoder first, on latents of ``frames`` x ``resolution`` clips
    (``fit_tiny_wan_decoder``); otherwise the sizes do not depend on ``frames``."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3)
    )  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0],
    )  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if vae_fit_steps:
        fit_tiny_wan_decoder(vae, seed, vae_fit_steps, resolution=resolution, frames=frames)
    modules: list[Any] = [text_encoder, vae, transformer]
    for module in modules:
        module.eval()  # built, not loaded: still in training mode (dropout)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)  # fmt: skip


def fit_tiny_wan_decoder(
    vae, seed: int, steps: int, *, resolution: int, frames: int, batch: int = 8, lr: float = 3e-3
) -> list[float]:
    """Fit a random Wan VAE's decoder (Adam, ``steps`` steps, in-process like the tiny tokenizer) to decode
    each latent position as a flat colour patch: pixel = tanh(A z) over the position's 8 x 8 pixels and
    its frames, A a fixed random 3 x C map whose rows share a brightness direction. A random decoder
    barely lets the latents move a clip's mean brightness (sd 0.0007-0.0035 over random latents on
    seeds 0-4; gradient ascent on the latents gains at most +0.01): its convolutions and RMS norms
    scramble what the latents say. A trained VAE spans the pixel range; after 200 steps this one does
    too (sd 0.065-0.087 on seeds 0-4), so a generation reward has something to move (notes/log/gen.md).
    Returns the loss per step."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed + 1000)
    channels = vae.config.z_dim
    # each RGB row = a shared brightness direction + its own colour part, so the latents set brightness
    luma = torch.randn(1, channels, generator=gen)
    colour = (luma / luma.norm() + 0.3 * torch.randn(3, channels, generator=gen) / channels**0.5) * 1.5
    # conv_in x 10: the latents then dominate the decoder's residual stream from the first step. Without
    # it the fit sits on a plateau (constant clips) for 100-175 of 200 steps at lr 1e-2 on seeds 0-4.
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(10.0)
        vae.decoder.conv_in.bias.mul_(10.0)
    params = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
    opt = torch.optim.Adam(params, lr=lr)
    time_factor = 2 ** sum(vae.config.temperal_downsample)
    space_factor = 2 ** len(vae.config.temperal_downsample)
    losses = []
    latent_shape = (channels, 1 + (frames - 1) // time_factor, resolution // space_factor, resolution // space_factor)
    vae.train()
    for _ in range(steps):
        z = torch.randn(batch, *latent_shape, generator=gen) * 1.5
        patch = torch.tanh(torch.einsum("rc,bcthw->brthw", colour, z))
        # latent frame 0 decodes to frame 0, each later one to time_factor frames (Wan's causal VAE)
        target = torch.cat([patch[:, :, :1], patch[:, :, 1:].repeat_interleave(time_factor, dim=2)], dim=2)
        target = F.interpolate(target, scale_factor=(1, space_factor, space_factor), mode="nearest")
        loss = F.mse_loss(vae.decode(z, return_dict=False)[0], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    vae.requires_grad_(False)
    vae.eval()
    return losses


def load_pipeline(
    kind: str,
    name: str,
    *,
    seed: int = 0,
    resolution: int = 32,
    frames: int = 1,
    dtype: torch.dtype = torch.float32,
    tiny_vae_fit_steps: int = 0,
):
    """``name``: ``tiny``, a local diffusers directory or a hub id -> the family's diffusers pipeline."""
    if kind not in ("sd3", "wan"):
        raise ValueError(f"model.kind={kind!r} is not a generation family: use sd3 or wan")
    if name == "tiny":
        if kind == "sd3":
            return tiny_sd3_pipeline(seed, resolution)
        return tiny_wan_pipeline(seed, resolution, frames, vae_fit_steps=tiny_vae_fit_steps)
    from diffusers import StableDiffusion3Pipeline, WanPipeline

    cls = StableDiffusion3Pipeline if kind == "sd3" else WanPipeline
    try:
        pipe = cls.from_pretrained(name, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"model.name={name!r} is not a {cls.__name__} directory or a reachable hub id ({err}); "
            "give a local diffusers directory (model_index.json at its top), or model.name=tiny"
        ) from None
    return pipe


@dataclass
class Cond:
    """One batch's text conditioning, row i for sample i (a prompt's n samples repeat its row)."""

    embeds: Tensor  # [B, L, D] the transformer's encoder_hidden_states
    pooled: Tensor | None  # [B, P] SD3's pooled projections; None for Wan
    neg_embeds: Tensor | None = None  # the negative prompt's, [B, L, D]; None without CFG
    neg_pooled: Tensor | None = None

    def take(self, index: Tensor | slice) -> Cond:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Cond(self.embeds[index], pick(self.pooled), pick(self.neg_embeds), pick(self.neg_pooled))


class FlowPolicy:
    """What the sampler and the loss need of a pipeline: the trainable transformer, its call with
    classifier-free guidance, the scheduler's sigmas, the latent shape and decoding to uint8 pixels.

    Text embeddings are computed once per prompt (``embed``) and kept; the text encoders are then
    not needed by training, which holds only the transformer and the VAE."""

    def __init__(self, pipe: Any, kind: str, *, resolution: int, max_text_tokens: int = 16, frames: int = 1):
        self.pipe, self.kind = pipe, kind
        self.transformer: Any = pipe.transformer  # a diffusers model: typed loosely, its config is a dict
        self.resolution, self.max_text_tokens, self.frames = resolution, max_text_tokens, frames
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}

    # -- text ------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """[len(prompts), L, D] embeddings (and [.., P] pooled ones for SD3), each prompt encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            device = next(self.transformer.parameters()).device
            pooled: Tensor | None = None
            if self.kind == "sd3":
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    missing, missing, missing, do_classifier_free_guidance=False,
                    max_sequence_length=self.max_text_tokens, device=device,
                )  # fmt: skip
            else:  # Wan: UMT5 states, zeroed past each prompt's length; no pooled projection
                embeds, _ = self.pipe.encode_prompt(
                    missing, do_classifier_free_guidance=False, max_sequence_length=self.max_text_tokens, device=device
                )
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (embeds[i], None if pooled is None else pooled[i])
        rows = [self._cache[p] for p in prompts]
        pooled_rows = [r[1] for r in rows]
        stacked = None if pooled_rows[0] is None else torch.stack([p for p in pooled_rows if p is not None])
        return torch.stack([r[0] for r in rows]), stacked

    def cond(self, prompts: list[str], n: int, negative_prompt: str | None) -> Cond:
        """Conditioning for ``n`` samples of each prompt, in prompt-major order (a group is contiguous)."""
        repeated = [p for p in prompts for _ in range(n)]
        embeds, pooled = self.embed(repeated)
        if negative_prompt is None:
            return Cond(embeds, pooled)
        neg, neg_pooled = self.embed([negative_prompt] * len(repeated))
        return Cond(embeds, pooled, neg, neg_pooled)

    # -- the transformer ---------------------------------------------------------------------------

    def _call(self, transformer: nn.Module, x: Tensor, timestep: Tensor, embeds: Tensor, pooled: Tensor | None):
        dtype = next(transformer.parameters()).dtype  # as the pipelines: embeddings in the transformer's dtype
        kwargs: dict[str, Any] = dict(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds.to(dtype))
        if self.kind == "sd3":
            kwargs["pooled_projections"] = pooled
        return transformer(**kwargs, return_dict=False)[0]

    def velocity(
        self, latents: Tensor, sigma: float, cond: Cond, guidance_scale: float, transformer: nn.Module | None = None
    ) -> Tensor:
        """The guided velocity at ``latents`` [B, ...]. SD3: the unconditional and conditional passes in
        one batch, [uncond; cond]; Wan: two passes, conditional first. Each as its diffusers pipeline
        does, so the numbers match theirs."""
        transformer = transformer or self.transformer
        dtype = next(transformer.parameters()).dtype
        # float32 sigma * 1000, as the scheduler's timesteps are computed: the same bits as the pipeline's
        t = torch.tensor(sigma, dtype=torch.float32) * 1000
        timestep = t.expand(latents.shape[0]).to(latents.device)
        if cond.neg_embeds is None or guidance_scale <= 1:
            return self._call(transformer, latents.to(dtype), timestep, cond.embeds, cond.pooled)
        if self.kind == "wan":
            text = self._call(transformer, latents.to(dtype), timestep, cond.embeds, None)
            uncond = self._call(transformer, latents.to(dtype), timestep, cond.neg_embeds, None)
            return uncond + guidance_scale * (text - uncond)
        both = torch.cat([latents, latents]).to(dtype)
        embeds = torch.cat([cond.neg_embeds, cond.embeds])
        pooled = None if cond.pooled is None or cond.neg_pooled is None else torch.cat([cond.neg_pooled, cond.pooled])
        uncond, text = self._call(transformer, both, torch.cat([timestep, timestep]), embeds, pooled).chunk(2)
        return uncond + guidance_scale * (text - uncond)

    # -- schedule, latents, pixels ----------------------------------------------------------------

    def sigmas(self, num_steps: int) -> Tensor:
        """The scheduler's sigmas for ``num_steps`` steps, [num_steps + 1] ending at 0 (a fresh copy of the
        scheduler, so the pipeline's own state is untouched)."""
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            h, w = self.latent_shape(1)[-2:]
            seq = (h // self.patch_size) * (w // self.patch_size)
            kwargs["mu"] = calculate_shift(seq)
        scheduler.set_timesteps(num_steps, device="cpu", **kwargs)
        return scheduler.sigmas.float()

    @property
    def patch_size(self) -> int:
        patch = self.transformer.config.patch_size
        return patch[-1] if isinstance(patch, (list, tuple)) else patch

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """SD3: [B, C, H', W']; Wan: [B, C, T', H', W'] with T' = (frames - 1) / 4 + 1 (the VAE's time factor)."""
        channels = self.transformer.config.in_channels
        if self.kind == "wan":
            h = self.resolution // self.pipe.vae_scale_factor_spatial
            return (batch, channels, (self.frames - 1) // self.pipe.vae_scale_factor_temporal + 1, h, h)
        h = self.resolution // self.pipe.vae_scale_factor
        return (batch, channels, h, h)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> uint8 pixels: [B, H, W, 3] images (SD3), [B, T, H, W, 3] frames (Wan)."""
        vae = self.pipe.vae
        if self.kind == "wan":
            # As WanPipeline: the latents are normalized per channel; undo it with the VAE's mean and std.
            z = latents.to(vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
            pixels = vae.decode(z / inv_std + mean, return_dict=False)[0].permute(0, 2, 3, 4, 1)
        else:
            z = latents.to(vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            pixels = vae.decode(z, return_dict=False)[0].permute(0, 2, 3, 1)
        # As diffusers' VaeImageProcessor: [-1, 1] -> [0, 1], then rounded to 8 bits.
        return ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
