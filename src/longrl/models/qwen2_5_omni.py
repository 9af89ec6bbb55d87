"""The Qwen2.5-Omni family: the thinker (text, video, images and audio in; text out), TMRoPE positions.

Only the thinker (``Qwen2_5OmniThinkerForConditionalGeneration``) is loaded and trained; the
talker and token2wav (speech out) are not. A thinker checkpoint (``model_type``
``qwen2_5_omni_thinker``, what longrl exports) loads as it is; a full Qwen2.5-Omni checkpoint
(``qwen2_5_omni``, the thinker under ``thinker_config`` and its weights under ``thinker.``) loads
its thinker alone: the config is read from ``thinker_config`` and transformers drops the
``thinker.`` prefix (the thinker's ``base_model_prefix``), leaving the talker's weights unread.

The thinker's text decoder is Qwen2's layer (q/k/v biases, no o_proj or MLP biases) with M-RoPE
sections, so longrl's decoder layer serves it as it serves Qwen2.5-VL's. Its vision tower is
Qwen2.5-VL's (the same patches, :class:`~longrl.models.inputs.VisionInputs`); its audio tower
takes Whisper log-mel features (``longrl.data.audio``).

A video's sound track (``VisionInputs.audio``) enters the prompt in one of two layouts, as
``Qwen2_5OmniProcessor`` writes them: ``in_video`` (``use_audio_in_video``) interleaves the video's
and the audio's tokens in chunks of ``seconds_per_chunk`` inside one vision block, with TMRoPE
giving both the same time axis (25 positions a second); otherwise the audio follows the video
in its own audio block. The prompt's media embeddings (``Prompt.video_embeds``) hold the video's
and the audio's together, in placeholder order, so rollout, log-probs and the update scatter
them as they scatter a video's. Positions are transformers' own ``get_rope_index``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)

from longrl.config_utils import ConfigError
from longrl.models.base import ModelFamily, tiny_text_fields
from longrl.models.config import TinyModelConfig
from longrl.models.inputs import AudioInputs, VisionInputs
from longrl.models.qwen2_5_vl import tiny_mrope_section, tiny_vision_fields
from longrl.models.tokenizer import SPECIAL_TOKENS, train_tokenizer

AUDIO_PAD, IMAGE_PAD, VIDEO_PAD = "<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>"
AUDIO_BOS, AUDIO_EOS, VISION_BOS, VISION_EOS = "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>"
# Qwen2.5-Omni's own spellings of its media tokens, as its tokenizer has them
OMNI_SPECIAL_TOKENS = [
    *SPECIAL_TOKENS[:3],
    AUDIO_PAD,
    AUDIO_BOS,
    AUDIO_EOS,
    VISION_BOS,
    VISION_EOS,
    IMAGE_PAD,
    VIDEO_PAD,
]
# Qwen2.5-Omni's chat template, reduced to what longrl sends (as the tiny Qwen2.5-VL's is)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen25Omni(ModelFamily):
    name = "qwen2_5_omni"
    model_types = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    mrope = True

    def model_class(self) -> Any:
        return Qwen2_5OmniThinkerForConditionalGeneration

    def from_pretrained(self, path: str, **kwargs: Any) -> Any:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        # the full model (thinker, talker, token2wav): its thinker only
        kwargs["config"] = config.thinker_config if config.model_type == "qwen2_5_omni" else config
        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, **kwargs)

    def tiny_tokenizer(self, texts: list[str], vocab_size: int) -> Any:
        return train_tokenizer(texts, vocab_size=vocab_size, special_tokens=OMNI_SPECIAL_TOKENS, template=CHAT_TEMPLATE)

    def tiny_config(self, tiny: Any, tokenizer: Any) -> Any:
        return tiny_config(tiny, tokenizer)

    def decoder(self, model: Any) -> Any:
        return model.model

    def text_config(self, model: Any) -> Any:
        return model.config.text_config

    def vision_tower(self, model: Any) -> Any:
        return model.visual

    def audio_tower(self, model: Any) -> Any:
        return model.audio_tower

    def media_token_ids(self, model: Any) -> tuple[int | None, ...]:
        return model.config.image_token_id, model.config.video_token_id, model.config.audio_token_id

    def expand_placeholders(self, model: Any, text: str, vision: VisionInputs | None) -> str:
        if text.count(AUDIO_PAD):
            raise ValueError("audio parts in the prompt are not supported; audio comes from the video's file")
        if vision is None:
            if text.count(IMAGE_PAD) + text.count(VIDEO_PAD):
                raise ValueError("the prompt holds a media placeholder but the row has no video or image")
            return text
        pad, kind = (IMAGE_PAD, "image") if vision.is_image else (VIDEO_PAD, "video")
        block = VISION_BOS + pad + VISION_EOS
        if text.count(block) != 1 or text.count(IMAGE_PAD) + text.count(VIDEO_PAD) != 1:
            raise ValueError(
                f"the prompt must hold exactly one {kind} block {block} and no other media, found "
                f"{text.count(IMAGE_PAD)} image and {text.count(VIDEO_PAD)} video placeholders"
            )
        if vision.audio is not None and vision.is_image:
            raise ValueError("audio goes with a video, not an image")
        tokens = {"video": pad, "audio": AUDIO_PAD}
        runs = "".join(tokens[k] * n for k, n in media_layout(model, vision))
        if vision.audio is None:
            expanded = VISION_BOS + runs + VISION_EOS
        elif vision.audio.in_video:
            expanded = VISION_BOS + AUDIO_BOS + runs + AUDIO_EOS + VISION_EOS
        else:  # the video's block, then the audio's
            n_video = vision_tokens(model, vision)
            expanded = VISION_BOS + runs[: n_video * len(pad)] + VISION_EOS
            expanded += AUDIO_BOS + runs[n_video * len(pad) :] + AUDIO_EOS
        return text.replace(block, expanded)

    def positions(self, model: Any, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
        return tmrope_positions(model, input_ids, vision)

    def media_forward_inputs(self, model: Any, input_ids: torch.Tensor, visions: list[VisionInputs]) -> dict:
        return thinker_media_inputs(model, visions)

    def encode_video(self, model: Any, vision: VisionInputs) -> torch.Tensor:
        return encode_media(model, vision)

    def forward_hidden(self, model: Any, inputs: dict) -> torch.Tensor:
        return thinker_hidden(model, inputs)

    def check_supported(self, model: Any) -> None:
        super().check_supported(model)
        if getattr(self.text_config(model), "use_sliding_window", False):
            raise ConfigError(
                "this qwen2_5_omni checkpoint uses sliding-window attention, which longrl does not implement"
            )


QWEN2_5_OMNI = Qwen25Omni()


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2_5OmniThinkerConfig:
    """A Qwen2.5-Omni thinker of a few hundred thousand parameters with the real architecture:
    Qwen2.5-VL's vision tower, a Whisper-style audio tower (128 mel bins, 2 s windows) and TMRoPE
    at the real 25 positions a second."""
    mrope_section = tiny_mrope_section(cfg)  # the 7B's [16, 24, 24] of 64, scaled

    def ids(token: str) -> int:
        return cast(int, tokenizer.convert_tokens_to_ids(token))  # one token in, one id out

    fields: dict[str, Any] = dict(
        text_config=dict(tiny_text_fields(cfg, tokenizer, mrope_section=mrope_section), tie_word_embeddings=False),
        vision_config=tiny_vision_fields(cfg),
        audio_config=dict(
            num_mel_bins=128,
            encoder_layers=cfg.vision_depth,
            encoder_attention_heads=cfg.vision_num_heads,
            encoder_ffn_dim=cfg.vision_hidden_size * 2,
            d_model=cfg.vision_hidden_size,
            output_dim=cfg.hidden_size,
            n_window=100,
            max_source_positions=1500,
        ),
        audio_token_index=ids(AUDIO_PAD),
        image_token_index=ids(IMAGE_PAD),
        video_token_index=ids(VIDEO_PAD),
        audio_start_token_id=ids(AUDIO_BOS),
        audio_end_token_id=ids(AUDIO_EOS),
        # not dataclass fields of the thinker config, but get_rope_index reads them, and a real
        # checkpoint's thinker_config has them
        vision_start_token_id=ids(VISION_BOS),
        vision_end_token_id=ids(VISION_EOS),
        user_token_id=ids("<|im_start|>"),  # read by the talker only, which is not built
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        tie_word_embeddings=False,
    )
    return Qwen2_5OmniThinkerConfig(**fields)


def vision_tokens(model, vision: VisionInputs) -> int:
    merge = model.config.vision_config.spatial_merge_size
    return int(vision.grid_thw.prod(-1).sum()) // (merge * merge)


def audio_tokens(model, audio: AudioInputs) -> int:
    """Audio embeddings of ``audio``'s features: two stride-2 reductions (the tower's conv and pool)."""
    _, out = model.audio_tower._get_feat_extract_output_lengths(torch.tensor(audio.features.shape[-1]))
    return int(out)


def media_layout(model, vision: VisionInputs) -> list[tuple[str, int]]:
    """The runs of placeholder tokens of ``vision`` (and its audio) in prompt order, as
    ("video" | "audio", count): the video's tokens then the audio's, or, with audio in the video,
    alternating chunks of ``seconds_per_chunk`` (transformers' chunking of TMRoPE time indices)."""
    n_video = vision_tokens(model, vision)
    if vision.audio is None:
        return [("video", n_video)]
    n_audio = audio_tokens(model, vision.audio)
    if not vision.audio.in_video:
        return [("video", n_video), ("audio", n_audio)]
    config = model.config
    merge = config.vision_config.spatial_merge_size
    t, gh, gw = (int(x) for x in vision.grid_thw[0])
    per_frame = (gh // merge) * (gw // merge)
    interval = float(vision.second_per_grid or 0.0) * config.position_id_per_seconds
    video_time = (torch.arange(t) * interval).long().repeat_interleave(per_frame)
    tokens_per_chunk = int(config.position_id_per_seconds * config.seconds_per_chunk)
    video_chunks = model.get_chunked_index(video_time, tokens_per_chunk, 0)
    audio_chunks = model.get_chunked_index(torch.arange(n_audio), tokens_per_chunk, 0)
    runs: list[tuple[str, int]] = []
    for j in range(max(len(video_chunks), len(audio_chunks))):
        for kind, chunks in (("video", video_chunks), ("audio", audio_chunks)):
            if j < len(chunks) and chunks[j][1] > chunks[j][0]:
                runs.append((kind, chunks[j][1] - chunks[j][0]))
    return runs


def encode_audio(model, audio: AudioInputs) -> torch.Tensor:
    """Run the audio tower once over one clip's features: [A, hidden] embeddings."""
    tower = model.audio_tower
    features = audio.features.to(device=tower.conv1.weight.device, dtype=tower.conv1.weight.dtype)
    frames = features.shape[-1]
    mask = torch.ones(1, frames, dtype=torch.long, device=features.device)
    return model.get_audio_features(features[None], feature_attention_mask=mask).last_hidden_state


def encode_media(model, vision: VisionInputs) -> torch.Tensor:
    """The embeddings of every media placeholder of ``vision``'s prompt, in prompt order: the
    vision tower's over the video (or image), interleaved with the audio tower's over its sound."""
    visual = model.visual
    pixels = vision.pixel_values.to(device=visual.device, dtype=visual.dtype)
    video = visual(pixels, grid_thw=vision.grid_thw.to(visual.device)).pooler_output
    if vision.audio is None:
        return video
    audio = encode_audio(model, vision.audio).to(video.dtype)
    parts, taken = [], {"video": 0, "audio": 0}
    for kind, n in media_layout(model, vision):
        source = video if kind == "video" else audio
        parts.append(source[taken[kind] : taken[kind] + n])
        taken[kind] += n
    assert taken == {"video": video.shape[0], "audio": audio.shape[0]}, (taken, video.shape, audio.shape)
    return torch.cat(parts)


def tmrope_positions(model, input_ids: torch.Tensor, vision: VisionInputs | None) -> torch.Tensor:
    """TMRoPE positions [3, L] of one prompt, by transformers' own ``get_rope_index``."""
    if vision is None:
        return torch.arange(len(input_ids)).view(1, -1).expand(3, -1).clone()
    kwargs = thinker_position_inputs([vision])
    positions, _ = model.get_rope_index(
        input_ids[None].cpu(),
        image_grid_thw=kwargs.get("image_grid_thw"),
        video_grid_thw=kwargs.get("video_grid_thw"),
        attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
        use_audio_in_video=kwargs["use_audio_in_video"],
        audio_seqlens=kwargs.get("audio_seqlens"),
        second_per_grids=kwargs.get("video_second_per_grid"),
    )
    return positions[:, 0]


def thinker_position_inputs(visions: list[VisionInputs]) -> dict[str, Any]:
    images = [v for v in visions if v.is_image]
    videos = [v for v in visions if not v.is_image]
    audios = [v.audio for v in videos if v.audio is not None]
    in_video = {a.in_video for a in audios}
    if len(in_video) > 1:
        raise ValueError("a batch mixes audio in the video with separate audio; transformers takes one layout")
    out: dict[str, Any] = {"use_audio_in_video": in_video == {True}}
    if images:
        out["image_grid_thw"] = torch.cat([v.grid_thw for v in images])
    if videos:
        out["video_grid_thw"] = torch.cat([v.grid_thw for v in videos])
        out["video_second_per_grid"] = torch.tensor([float(cast(float, v.second_per_grid)) for v in videos])
    if audios:
        out["audio_seqlens"] = torch.tensor([a.features.shape[-1] for a in audios])
    return out


def thinker_media_inputs(model, visions: list[VisionInputs]) -> dict[str, Any]:
    """The keyword arguments of the thinker's own forward (and ``generate``) for ``visions``, in
    row order: pixels and grids, log-mel features right-padded with their mask, the audio layout."""
    if not visions:
        return {}
    inputs = thinker_position_inputs(visions)
    seqlens = inputs.pop("audio_seqlens", None)
    images = [v for v in visions if v.is_image]
    videos = [v for v in visions if not v.is_image]
    if images:
        inputs["pixel_values"] = torch.cat([v.pixel_values for v in images])
    if videos:
        inputs["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
    audios = [v.audio for v in videos if v.audio is not None]
    if audios and seqlens is not None:
        longest = int(seqlens.max())
        features = torch.zeros(len(audios), audios[0].features.shape[0], longest)
        mask = torch.zeros(len(audios), longest, dtype=torch.long)
        for i, a in enumerate(audios):
            features[i, :, : a.features.shape[-1]] = a.features
            mask[i, : a.features.shape[-1]] = 1
        inputs["input_features"], inputs["feature_attention_mask"] = features, mask
    return inputs


def thinker_hidden(model, inputs: dict) -> torch.Tensor:
    """Final hidden states [B, L, H] of the thinker's own forward of a batch (its towers, its
    placeholder scatter and ``get_rope_index``), without the LM head over every position."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    embeds = model.get_input_embeddings()(ids)
    config = model.config
    if "input_features" in inputs:
        audio = model.get_audio_features(
            inputs["input_features"], feature_attention_mask=inputs["feature_attention_mask"]
        ).last_hidden_state
        embeds = embeds.masked_scatter((ids == config.audio_token_id)[..., None], audio.to(embeds.dtype))
    for pixels, grid, token in (
        ("pixel_values", "image_grid_thw", config.image_token_id),
        ("pixel_values_videos", "video_grid_thw", config.video_token_id),
    ):
        if pixels in inputs:
            out = model.visual(inputs[pixels].to(model.visual.dtype), grid_thw=inputs[grid]).pooler_output
            embeds = embeds.masked_scatter((ids == token)[..., None], out.to(embeds.dtype))
    seqlens = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
    positions, _ = model.get_rope_index(
        ids,
        inputs.get("image_grid_thw"),
        inputs.get("video_grid_thw"),
        mask,
        bool(inputs.get("use_audio_in_video", False)),
        seqlens,
        inputs.get("video_second_per_grid"),
    )
    return model.model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
