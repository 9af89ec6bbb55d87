"""Rewards over decoded images and frames, as plug-ins of ``longrl.rewards``.

Every generation reward has the registry's one signature, ``fn(sample: RewardInput) -> float | dict``;
the pixels ride in ``sample.row``: ``row["image"]`` a uint8 [H, W, 3] array, or ``row["frames"]`` a
uint8 [T, H, W, 3] array for a clip (``row["image"]`` is then its middle frame), and
``sample.question`` is the prompt. So a user function (``reward.functions=[my.py:fn]``) reads the
same fields, and ``RewardModel`` applies the usual rules: a function that raises scores
``reward.fallback_score`` and is counted, the judge is watched over its failure window.

Built in (registered when this module is imported): ``brightness``, ``target_color`` (the colour
word of the prompt), ``jpeg_compressibility`` and ``image_judge`` (a vision-language judge over
any OpenAI-compatible endpoint, the images sent as image parts).
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np

from longrl.rewards.config import RewardConfig
from longrl.rewards.judge import JudgeClient, JudgeReward, parse_judge_score
from longrl.rewards.registry import RewardInput, register_reward

# sRGB of the colour words of the synthetic prompts (longrl.gen.data.COLOURS).
COLOUR_RGB = {
    "red": (220, 30, 30), "green": (40, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "black": (10, 10, 10), "orange": (245, 140, 20), "purple": (130, 40, 160),
    "pink": (245, 150, 190), "brown": (120, 75, 40),
}  # fmt: skip
JUDGE_PROMPT = (
    "You grade generated images. Given the prompt and the image, say how well the image shows what the "
    "prompt asks for. Reply with one line, 'Score: N', N an integer from 0 (not at all) to 10 (exactly)."
)


def pixels(sample: RewardInput) -> np.ndarray:
    """The sample's uint8 pixels: [H, W, 3] or [T, H, W, 3]."""
    for key in ("frames", "image"):
        value = sample.row.get(key)
        if value is not None:
            array = np.asarray(value)
            if array.dtype != np.uint8 or array.shape[-1] != 3:
                raise ValueError(f"row[{key!r}] must be uint8 [..., H, W, 3]; got {array.dtype} {array.shape}")
            return array
    raise ValueError("the sample has no row['image'] or row['frames']: generation rewards score decoded pixels")


@register_reward("brightness")
def brightness(sample: RewardInput) -> float:
    """Mean pixel value in [0, 1] (0 black, 1 white)."""
    return float(pixels(sample).mean() / 255.0)


@register_reward("target_color")
def target_color(sample: RewardInput) -> float:
    """1 - the mean distance of the pixels to the prompt's colour (its first colour word; or
    ``row["target_color"]`` as [r, g, b]), scaled to [0, 1]."""
    target = sample.row.get("target_color")
    if target is None:
        words = re.findall(r"[a-z]+", sample.question.lower())
        named = next((w for w in words if w in COLOUR_RGB), None)
        if named is None:
            raise ValueError(f"prompt {sample.question!r} names no colour of {', '.join(COLOUR_RGB)}")
        target = COLOUR_RGB[named]
    diff = pixels(sample).astype(np.float32) - np.asarray(target, dtype=np.float32)
    return float(1.0 - np.sqrt((diff**2).sum(-1)).mean() / (255.0 * np.sqrt(3.0)))


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@register_reward("jpeg_compressibility")
def jpeg_compressibility(sample: RewardInput) -> float:
    """Minus the JPEG size (quality 95) in bits per pixel, as DDPO's compressibility reward (which
    takes kilobytes at 512 px): per pixel, so the scale does not depend on the resolution."""
    array = pixels(sample)
    frames = array if array.ndim == 4 else array[None]
    bits = sum(len(_jpeg(f)) * 8 for f in frames)
    return -bits / float(frames.shape[0] * frames.shape[1] * frames.shape[2])


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def judge_image_messages(sample: RewardInput, max_frames: int = 4) -> list[dict]:
    """The judge's chat: the prompt as text, the image (or up to ``max_frames`` frames) as image parts."""
    array = pixels(sample)
    picks = np.linspace(0, len(array) - 1, min(max_frames, len(array))).round().astype(int)
    frames = [array] if array.ndim == 3 else [array[i] for i in picks]
    parts: list[dict] = [{"type": "text", "text": f"Prompt: {sample.question}"}]
    parts += [{"type": "image_url", "image_url": {"url": png_data_url(f)}} for f in frames]
    return [{"role": "system", "content": JUDGE_PROMPT}, {"role": "user", "content": parts}]


class ImageJudgeReward(JudgeReward):
    """The judge's score in [0, 1] of how well the image shows the prompt. A JudgeReward, so
    ``RewardModel`` counts its failures and stops the run past ``reward.judge_max_failure_frac``."""

    def __call__(self, sample: RewardInput) -> float:
        return self.client.ask(judge_image_messages(sample), parse_judge_score)


@register_reward("image_judge", factory=True)
def make_image_judge(cfg: RewardConfig) -> ImageJudgeReward:
    return ImageJudgeReward(
        JudgeClient(
            cfg.judge_base_url, cfg.judge_model, api_key_env=cfg.judge_api_key_env, timeout_s=cfg.judge_timeout_s,
            max_retries=cfg.judge_max_retries, backoff_s=cfg.judge_retry_backoff_s,
            max_concurrency=cfg.judge_max_concurrency, cache_path=cfg.judge_cache_path, max_tokens=16,
        )
    )  # fmt: skip
