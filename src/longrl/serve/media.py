"""Chat messages -> the chat template's messages plus at most one decoded image or video.

Content parts a user message may hold (a message's content may also be a plain string):

    {"type": "text", "text": "What happens after the red square leaves?"}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}        # or file:///abs/x.png
    {"type": "video", "video": "/abs/or/relative/clip.mp4", "num_frames": 16}       # num_frames optional
    {"type": "video_url", "video_url": {"url": "file:///abs/clip.mp4"}}             # vLLM's spelling

Local files must lie under the server's ``--media-root``. One request holds at most one image or
video: the rollout engine takes one visual input per prompt. Images and videos are decoded and
preprocessed as for training rows (``longrl.data.image``, ``longrl.data.video``), so a served model
sees what it was trained on.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlparse

from longrl.data.image import decode_image
from longrl.data.video import VideoError, decode_video
from longrl.data.vision_preprocess import preprocess_image, preprocess_video
from longrl.models.inputs import VisionInputs
from longrl.serve.config import ServeConfig
from longrl.serve.errors import bad_request


@dataclass
class MediaRef:
    kind: str  # "image" | "video"
    param: str  # where it came from, e.g. messages[1].content[0]
    path: Path | None = None
    data: bytes | None = None  # an image sent inline as a data URL
    num_frames: int = 0


def template_messages(messages, cfg: ServeConfig) -> tuple[list[dict], MediaRef | None]:
    """Request messages -> messages for ``apply_chat_template`` and the one media reference."""
    out, media = [], None
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or isinstance(content, str):
            out.append({"role": role, "content": content or ""})
            continue
        parts = []
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{param}: a text part needs a string 'text'", param=param)
                parts.append({"type": "text", "text": part["text"]})
                continue
            if kind not in ("image_url", "video", "video_url"):
                raise bad_request(
                    f"{param}: unknown content part type {kind!r}; use text, image_url, video or video_url", param=param
                )
            if role != "user":
                raise bad_request(f"{param}: images and videos go in user messages, not {role}", param=param)
            if media is not None:
                raise bad_request(
                    f"{param}: a request holds at most one image or video (the first is {media.param})", param=param
                )
            media = _media_ref(part, kind, param, cfg)
            parts.append({"type": media.kind})
        if role != "user":  # the template renders system/assistant content as text only
            out.append({"role": role, "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": role, "content": parts})
    return out, media


def _media_ref(part: dict, kind: str, param: str, cfg: ServeConfig) -> MediaRef:
    if kind == "video":
        target = part.get("video")
        num_frames = part.get("num_frames", cfg.num_frames)
    else:
        inner = part.get(kind)
        target = inner.get("url") if isinstance(inner, dict) else inner
        num_frames = part.get("num_frames", cfg.num_frames)
    if not isinstance(target, str) or not target:
        raise bad_request(f"{param}: a {kind} part needs a URL or path string", param=param)
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or not 1 <= num_frames <= cfg.max_frames:
        raise bad_request(
            f"{param}: num_frames must be an integer in [1, {cfg.max_frames}], got {num_frames!r}", param=param
        )
    kind_out = "image" if kind == "image_url" else "video"
    if target.startswith("data:"):
        if kind_out != "image":
            raise bad_request(f"{param}: videos are sent as local files, not data URLs", param=param)
        return MediaRef(kind_out, param, data=_data_url(target, param))
    return MediaRef(kind_out, param, path=_local_path(target, param, cfg), num_frames=num_frames)


def _data_url(url: str, param: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise bad_request(f"{param}: only base64 data URLs are supported (data:image/png;base64,...)", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the data URL's payload is not valid base64", param=param) from None


def _local_path(target: str, param: str, cfg: ServeConfig) -> Path:
    parsed = urlparse(target)
    if parsed.scheme not in ("", "file"):
        raise bad_request(
            f"{param}: {parsed.scheme}:// URLs are not fetched; send a data URL or a local file path", param=param
        )
    root = Path(cfg.media_root).resolve()
    raw = Path(unquote(parsed.path) if parsed.scheme == "file" else target).expanduser()
    path = (raw if raw.is_absolute() else root / raw).resolve()
    if not path.is_relative_to(root):
        raise bad_request(f"{param}: {path} is outside the server's media root {root} (--media-root)", param=param)
    if not path.is_file():
        raise bad_request(f"{param}: file {path} does not exist", param=param)
    return path


def load_media(ref: MediaRef, cfg: ServeConfig) -> VisionInputs:
    """Decode and preprocess the image or video; raises APIError(400) for a file that is not one."""
    try:
        if ref.kind == "image":
            image = decode_image(ref.data if ref.data is not None else cast(Path, ref.path), name=ref.param)
            return preprocess_image(image, min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels)
        video = decode_video(cast(Path, ref.path), num_frames=ref.num_frames)  # a video is always a file
        return preprocess_video(
            video.frames, sample_fps=video.sample_fps, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
        )
    except VideoError as error:  # ImageError too
        raise bad_request(f"{ref.param}: {error}", param=ref.param) from None
    except ValueError as error:  # smart-resize's aspect-ratio limit, an empty decode
        raise bad_request(f"{ref.param}: {error}", param=ref.param) from None
