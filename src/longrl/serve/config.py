"""Server configuration (``longrl serve`` flags map one to one onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    model: str = ""  # a directory saved by longrl (save_pretrained / export) or a Qwen2.5-VL checkpoint
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the server to the network
    port: int = 8000  # TCP port
    served_model_name: str = ""  # the id /v1/models lists and requests must name (default: the model dir's name)
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    api_key_env: str = ""  # name of an env var holding the API key; empty = no key required
    max_context_tokens: int = 32768  # prompt + max_tokens limit per request; larger requests get a 400
    default_max_tokens: int = 256  # max_tokens when a request sets none (cut to fit the context)
    max_n: int = 16  # largest n one request may ask for
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests before one generate call
    max_batch_prompts: int = 16  # prompts per generate call (RolloutConfig.max_prompts_per_batch)
    max_queue: int = 1024  # requests waiting at once; more get a 429
    media_root: str = "."  # local image/video files must lie under this directory
    num_frames: int = 16  # frames sampled from a video part that sets no num_frames
    max_frames: int = 256  # largest num_frames a video part may ask for
    min_pixels: int = 56 * 56  # Qwen smart-resize bounds per video frame, as data.min_pixels
    max_pixels: int = 448 * 448  # as data.max_pixels
    image_min_pixels: int = 56 * 56  # an image part's smart-resize bounds, as data.image_min_pixels
    image_max_pixels: int = 28 * 28 * 1280  # as data.image_max_pixels
    max_request_bytes: int = 64 * 2**20  # larger bodies get a 413 before they are read


def field_help() -> dict[str, str]:
    """Each field's trailing comment, for the ``longrl serve`` flags' help."""
    import inspect
    import re

    found = re.findall(r"^\s+(\w+): [^#\n]+#\s*(.+)$", inspect.getsource(ServeConfig), re.M)
    return dict(found)
