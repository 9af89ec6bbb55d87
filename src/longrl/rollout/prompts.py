"""Checking prompts before any GPU work, and their input embeddings chunk by chunk."""

from __future__ import annotations

import torch

from longrl.rollout.decoder import TextDecoder


def check_prompts(prompts, dec: TextDecoder, max_new_tokens: int, max_tokens: int = 0) -> None:
    """Raise ValueError naming the first bad prompt and how to fix it.

    A prompt is too long when its response would run past the model's positions
    (``next_position + max_new_tokens > max_position_embeddings``; a video's tokens share M-RoPE
    positions, so this is not the token count) or, if ``max_tokens`` > 0, when prompt tokens +
    ``max_new_tokens`` exceed it."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("generate() needs a non-empty list of Prompt objects (longrl.models.adapter.build_prompt)")
    for i, p in enumerate(prompts):
        where = f"prompt {i}"
        for name in ("input_ids", "position_ids", "video_embeds", "next_position"):
            if not hasattr(p, name):
                raise ValueError(
                    f"{where} is a {type(p).__name__}, not a Prompt (no {name!r}); "
                    "build it with longrl.models.adapter.build_prompt"
                )
        ids = p.input_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype not in (torch.long, torch.int):
            raise ValueError(
                f"{where}: input_ids must be a 1-D integer tensor, got "
                f"{getattr(ids, 'dtype', type(ids))} of shape {tuple(getattr(ids, 'shape', ()))}"
            )
        length = ids.numel()
        if length == 0:
            raise ValueError(
                f"{where} is empty (0 tokens): every prompt needs at least one token, "
                "e.g. the chat template's generation prompt"
            )
        if max_tokens and length + max_new_tokens > max_tokens:
            raise ValueError(
                f"{where} is too long: {length} prompt tokens + max_new_tokens={max_new_tokens} > "
                f"rollout max_context_tokens={max_tokens}; sample fewer frames, lower "
                "max_new_tokens, or raise max_context_tokens"
            )
        last = int(p.next_position) + max_new_tokens
        if last > dec.max_positions:
            raise ValueError(
                f"{where} is too long: its response would reach position {last} > the model's "
                f"max_position_embeddings={dec.max_positions}; shorten the prompt (sample fewer frames) or "
                "lower max_new_tokens"
            )
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= dec.vocab_size:
            raise ValueError(f"{where}: token ids span [{lo}, {hi}], outside the vocabulary [0, {dec.vocab_size})")
        pos = p.position_ids
        if not isinstance(pos, torch.Tensor) or tuple(pos.shape) != (3, length):
            raise ValueError(
                f"{where}: position_ids must be [3, {length}] (M-RoPE t/h/w per token), got "
                f"{tuple(getattr(pos, 'shape', ()))}"
            )
        if int(p.next_position) <= int(pos.max()):
            raise ValueError(
                f"{where}: next_position={p.next_position} must exceed the largest prompt position {int(pos.max())}"
            )
        n_media = int(media_mask(ids, dec).sum())
        emb = p.video_embeds
        n_emb = 0 if emb is None else emb.shape[0]
        if n_media != n_emb:
            vision = getattr(p, "vision", None)
            kind = "image" if vision is not None and vision.is_image else "video"
            raise ValueError(
                f"{where} has {n_media} {kind} placeholder tokens but {n_emb} embeddings; "
                "rebuild it with build_prompt so the placeholder is expanded to one token per embedding"
            )
        if emb is not None and (emb.dim() != 2 or emb.shape[1] != dec.hidden_size):
            raise ValueError(
                f"{where}: video_embeds must be [{n_media}, {dec.hidden_size}], got {tuple(emb.shape)} "
                "(embeddings from another model?)"
            )


def media_mask(ids: torch.Tensor, dec: TextDecoder) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(dec.media_token_ids, dtype=ids.dtype, device=ids.device))


class PromptEmbedder:
    """Input embeddings of one prompt, produced a chunk at a time (never the whole [L, H] at once)."""

    def __init__(self, dec: TextDecoder, prompt):
        self.dec = dec
        self.ids = prompt.input_ids.to(dec.device)
        self.video = prompt.video_embeds
        self.is_media = media_mask(self.ids, dec)  # the image's or video's placeholders (none for text models)
        self.media_row = self.is_media.long().cumsum(0) - 1  # which embedding each placeholder takes

    def __call__(self, start: int, end: int) -> torch.Tensor:
        emb = self.dec.embed(self.ids[start:end])
        if self.video is not None:
            mask = self.is_media[start:end]
            rows = self.media_row[start:end][mask]
            emb[mask] = self.video.to(device=emb.device, dtype=emb.dtype)[rows]
        return emb
