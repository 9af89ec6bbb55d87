"""Qwen2.5-VL adapter: loading, the tiny offline model, and building the Prompt every phase shares
(:class:`longrl.models.inputs.Prompt`).

A Prompt is built once per dataset row per step: token ids, the video embeddings from one pass of
the vision tower, and 3-D M-RoPE positions. Rollout, old/reference log-probs and the update all
read it, so nothing re-decodes a video or re-runs the tower within a step (unless the tower trains;
then :func:`prompt_embeds` re-encodes once per group, with gradients). Chat messages come from the
caller (longrl's template: :func:`longrl.data.prompt.encode_prompts`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from longrl.config_utils import ConfigError
from longrl.models.attention import AttentionLayout, use_longrl_attention
from longrl.models.config import ModelConfig, TinyModelConfig
from longrl.models.inputs import Prompt, VisionInputs
from longrl.models.rope import use_reference_rope_index
from longrl.models.tokenizer import train_tokenizer


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL of a few hundred thousand parameters with the real architecture."""
    head_dim = cfg.hidden_size // cfg.num_heads
    # M-RoPE splits head_dim/2 rotary frequencies over (t, h, w) like the 3B's [16, 24, 24] of 64.
    half = head_dim // 2
    h = w = (half * 3) // 8
    mrope_section = [half - h - w, h, w]

    def ids(token: str) -> int:
        return cast(int, tokenizer.convert_tokens_to_ids(token))  # one token in, one id out

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_hidden_size * 2,
            num_heads=cfg.vision_num_heads,
            out_hidden_size=cfg.hidden_size,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=[cfg.vision_depth - 1],
            tokens_per_second=cfg.tokens_per_second,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_path(path: str) -> None:
    """Fail in one line, before anything loads, when ``model.path`` is not "tiny", a directory
    holding a model (config.json), or something shaped like a hub id (``owner/name``)."""
    if path == "tiny":
        return
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return
        if (local / "model" / "config.json").is_file():
            hint = f"a run directory? its model is model.path={(local / 'model').as_posix()}"
        elif (local / "checkpoints").is_dir() or (local / "trainer_state.pt").exists():
            hint = f"a checkpoint? export it first: longrl export --ckpt {path} --out DIR, then model.path=DIR"
        else:
            hint = "point it at a model directory (a run's OUT/model or `longrl export --out`), a hub id, or tiny"
        raise ConfigError(f"model.path={path!r} holds no model (no config.json in it); {hint}")
    if local.exists():
        raise ConfigError(f"model.path={path!r} is a file; point it at a model directory (with config.json)")
    # owner/name with no local folder called owner is a hub id; anything else was meant as a local path
    if _HUB_ID.fullmatch(path) and not Path(path.split("/")[0]).exists():
        return
    raise ConfigError(
        f"model.path={path!r} does not exist; point it at a model directory (a run's OUT/model or "
        "`longrl export --out`), a hub id (owner/name), or tiny"
    )


def load_model(
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    tokenizer_texts: list[str] | None = None,
    seed: int = 0,
) -> tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerBase]:
    """Load ``cfg.path`` (a local checkpoint dir or hub id), or build the tiny model when it is "tiny".

    The tiny model's tokenizer is trained on ``tokenizer_texts``; save both with
    :func:`save_pretrained` and later runs reload them from that directory, offline.
    """
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer: PreTrainedTokenizerBase
    if cfg.path == "tiny":
        if not tokenizer_texts:
            raise ValueError("the tiny model trains its tokenizer on the run's text: pass tokenizer_texts")
        tokenizer = train_tokenizer(tokenizer_texts, vocab_size=cfg.tiny.vocab_size)
        config = tiny_config(cfg.tiny, tokenizer)
        config._attn_implementation = cfg.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        path = cfg.path
        check_model_path(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    use_longrl_attention(model.config.text_config)
    use_reference_rope_index(model)
    model.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers wraps .to(); mypy misreads it
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not cfg.train_vision:
        model.model.visual.requires_grad_(False)
    return model, tokenizer


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Write weights (safetensors), config and tokenizer so ``from_pretrained`` reloads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    impl = model.config.text_config._attn_implementation
    model.config.text_config._attn_implementation = "sdpa"  # the saved model must load without longrl
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        model.config.text_config._attn_implementation = impl
    tokenizer.save_pretrained(out_dir)


def vision_tokens(model, vision: VisionInputs) -> int:
    merge = model.config.vision_config.spatial_merge_size
    return int(vision.grid_thw.prod(-1).sum()) // (merge * merge)


def encode_video(model, vision: VisionInputs, *, batched_attention: bool = True) -> torch.Tensor:
    """Run the vision tower once: [V, hidden] embeddings, one per merged patch group.

    ``batched_attention`` (default): the tower's windowed attention runs as a few batched SDPA
    calls (``longrl.models.vision_attention``, installed in the tower from then on) instead of
    transformers' one call per window; False: transformers' own path, for this call (no grad
    through a checkpointed tower then: its recompute would run the other path)."""
    from longrl.models.vision_attention import transformers_vision_attention, use_batched_vision_attention

    visual = model.model.visual
    pixels = vision.pixel_values.to(device=visual.device, dtype=visual.dtype)
    if not batched_attention:
        with transformers_vision_attention(visual):
            return visual(pixels, grid_thw=vision.grid_thw.to(visual.device)).pooler_output
    use_batched_vision_attention(visual)  # for good: a checkpointed tower recomputes its blocks in backward
    return visual(pixels, grid_thw=vision.grid_thw.to(visual.device)).pooler_output


def prompt_token_ids(
    model, tokenizer: PreTrainedTokenizerBase, messages: list[dict], vision: VisionInputs | None
) -> torch.Tensor:
    """Token ids [L] of chat ``messages`` with the video placeholder expanded to one token per
    video embedding, ending with the assistant turn's header (generation starts after it)."""
    text = cast(str, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    pad = "<|video_pad|>"
    if vision is not None:
        if text.count(pad) != 1:
            raise ValueError(f"prompt must hold exactly one video placeholder, found {text.count(pad)}")
        text = text.replace(pad, pad * vision_tokens(model, vision))
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def mrope_positions(model, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
    """M-RoPE positions [3, L] of one prompt, by the reference rule (``longrl.models.rope``)."""
    if vision is None:
        return torch.arange(len(input_ids)).view(1, -1).expand(3, -1).clone()
    mm_type = (input_ids == model.config.video_token_id).int() * 2  # 2 marks video tokens
    positions, _ = model.model.get_rope_index(
        input_ids[None].cpu(),
        mm_token_type_ids=mm_type[None].cpu(),
        video_grid_thw=vision.grid_thw,
        second_per_grid_ts=torch.tensor([vision.second_per_grid]),
    )
    return positions[:, 0]


def build_prompt(
    model,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    vision: VisionInputs | None,
    *,
    video_embeds: torch.Tensor | None = None,
    meta: dict | None = None,
) -> Prompt:
    """Tokenize ``messages`` (at most one video part), compute M-RoPE positions and the video
    embeddings (one tower pass, no gradients; ``video_embeds`` reuses precomputed ones)."""
    input_ids = prompt_token_ids(model, tokenizer, messages, vision)
    positions = mrope_positions(model, input_ids, vision)
    if vision is not None and video_embeds is None:
        with torch.no_grad():
            video_embeds = encode_video(model, vision)
    device = model.device
    return Prompt(
        input_ids=input_ids.to(device),
        position_ids=positions.to(device),
        video_embeds=None if video_embeds is None else video_embeds.to(device),
        vision=vision,
        next_position=int(positions.max()) + 1,
        meta=meta or {},
    )


def prompt_embeds(model, prompt: Prompt, *, grad_through_vision: bool = False) -> torch.Tensor:
    """Input embeddings [L, hidden] of ``prompt``: token embeddings with the video scattered in.

    With ``grad_through_vision`` the tower re-encodes the video with gradients (once per call:
    call it once per group, never once per sample)."""
    embeds = model.get_input_embeddings()(prompt.input_ids)
    if prompt.vision is None:
        return embeds
    video = encode_video(model, prompt.vision) if grad_through_vision else prompt.video_embeds
    assert video is not None, "a prompt with vision inputs carries their embeddings (build_prompt)"
    mask = (prompt.input_ids == model.config.video_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, video.to(embeds.dtype))


def decoder_forward(
    model,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    attention: AttentionLayout | None = None,
) -> torch.Tensor:
    """Run the text decoder on ``embeds [B, L, H]`` at ``position_ids [3, B, L]``; final hidden states.

    ``attention`` is a longrl layout (packed groups, cascade caches); None means plain causal.
    """
    mask = None if attention is None else {"full_attention": attention}
    out = model.model.language_model(
        inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask, use_cache=False
    )
    return out.last_hidden_state


def lm_head(model) -> torch.nn.Linear:
    return model.lm_head
