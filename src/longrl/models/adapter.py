"""The model-facing functions every phase calls, for any supported family (``longrl.models.family``):
load and save, build a :class:`~longrl.models.inputs.Prompt`, its input embeddings, and the
decoder forward. Nothing outside ``longrl.models`` reads transformers' model internals.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from longrl.config_utils import ConfigError
from longrl.models.attention import AttentionLayout
from longrl.models.config import ModelConfig
from longrl.models.family import family_named, family_of, model_type_at
from longrl.models.inputs import Prompt, VisionInputs


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load ``cfg.path`` (a local checkpoint dir or hub id) as its family's transformers class
    (chosen from config.json's ``model_type``), or build the tiny model of ``cfg.tiny.family``.

    The tiny model's tokenizer is trained on ``tokenizer_texts``; save both with
    :func:`save_pretrained` and later runs reload them from that directory, offline.
    """
    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer: PreTrainedTokenizerBase
    if cfg.path == "tiny":
        if not tokenizer_texts:
            raise ValueError("the tiny model trains its tokenizer on the run's text: pass tokenizer_texts")
        family = family_named(cfg.tiny.family, "model.tiny.family")
        tokenizer = family.tiny_tokenizer(tokenizer_texts, cfg.tiny.vocab_size)
        config = family.tiny_config(cfg.tiny, tokenizer)
        config._attn_implementation = cfg.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = family.model_class()(config)
    else:
        path = cfg.path
        check_model_path(path)
        family = family_named(model_type_at(path), f"model.path={path!r} holds a model_type")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = family.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    family.check_supported(model)
    family.prepare(model)
    model.to(device=device, dtype=dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for tower in (family.vision_tower(model), family.audio_tower(model)):
        if tower is not None and not cfg.train_vision:
            tower.requires_grad_(False)
    return model, tokenizer


def save_pretrained(model, tokenizer, out_dir: str | Path) -> None:
    """Write weights (safetensors), config and tokenizer so ``from_pretrained`` reloads them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_config = family_of(model).text_config(model)
    impl = text_config._attn_implementation
    text_config._attn_implementation = "sdpa"  # the saved model must load without longrl
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        text_config._attn_implementation = impl
    tokenizer.save_pretrained(out_dir)


def prompt_token_ids(
    model, tokenizer: PreTrainedTokenizerBase, messages: list[dict], vision: VisionInputs | None
) -> torch.Tensor:
    """Token ids [L] of chat ``messages`` (the checkpoint's own chat template) with a media
    placeholder expanded to one token per embedding, ending with the assistant turn's header
    (generation starts after it)."""
    text = cast(str, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    text = family_of(model).expand_placeholders(model, text, vision)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def build_prompt(
    model,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    vision: VisionInputs | None,
    *,
    video_embeds: torch.Tensor | None = None,
    meta: dict | None = None,
) -> Prompt:
    """Tokenize ``messages`` (at most one video or image part), compute positions and the media
    embeddings (one tower pass, no gradients; ``video_embeds`` reuses precomputed ones)."""
    family = family_of(model)
    input_ids = prompt_token_ids(model, tokenizer, messages, vision)
    positions = family.positions(model, input_ids, vision)
    if vision is not None and video_embeds is None:
        with torch.no_grad():
            video_embeds = family.encode_video(model, vision)
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
    """Input embeddings [L, hidden] of ``prompt``: token embeddings with the video's (or image's)
    scattered in.

    With ``grad_through_vision`` the tower re-encodes the video or image with gradients (once per call:
    call it once per group, never once per sample)."""
    embeds = model.get_input_embeddings()(prompt.input_ids)
    if prompt.vision is None:
        return embeds
    family = family_of(model)
    video = family.encode_video(model, prompt.vision) if grad_through_vision else prompt.video_embeds
    assert video is not None, "a prompt with vision inputs carries their embeddings (build_prompt)"
    mask = family.media_mask(model, prompt.input_ids).unsqueeze(-1)
    return embeds.masked_scatter(mask, video.to(embeds.dtype))


def decoder_forward(
    model,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    attention: AttentionLayout | None = None,
) -> torch.Tensor:
    """Run transformers' own text decoder on ``embeds [B, L, H]`` at ``position_ids [3, B, L]``; final hidden states.

    ``attention`` is a longrl layout (packed groups, cascade caches); None means plain causal.
    """
    mask = None if attention is None else {"full_attention": attention}
    family = family_of(model)
    out = family.decoder(model)(
        inputs_embeds=embeds,
        position_ids=family.rotary_positions(position_ids),
        attention_mask=mask,
        use_cache=False,
    )
    return out.last_hidden_state


def lm_head(model) -> torch.nn.Linear:
    return model.lm_head


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes an assistant turn in the checkpoint's own chat template (Qwen's
    ``<|im_end|>``, Llama 3's ``<|eot_id|>``): SFT targets end with it and sampling stops at it.
    Found by rendering a one-turn conversation; the tokenizer's EOS when the template shows none."""
    marker = "longrl-end-of-turn-probe"
    found = tokenizer.eos_token_id
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        tail = cast(str, text).split(marker, 1)[1]
        special = set(tokenizer.all_special_ids)
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        found = next((i for i in ids if i in special), found)
    except (ValueError, IndexError, TypeError, AttributeError):  # no chat template, or one that drops the turn
        pass
    if found is None:
        raise ValueError("the tokenizer has no chat template end-of-turn token and no eos_token; set one")
    return int(found)
