"""Shared pieces of the benchmarks: model shapes with random weights, and the GPU's numbers.

No download: the 3B model is Qwen2.5-VL-3B-Instruct's published shape with random weights, which
costs exactly what the real one costs to run (timing does not depend on the values); likewise the
text-only Qwen2.5-1.5B and Llama-3.2-1B shapes (``bench rollout --family``).
Keep this module small and stable; both ``bench rollout`` and ``bench train`` import it.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
from transformers import (
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
)

from longrl.models.config import TinyModelConfig
from longrl.models.family import family_named, family_of
from longrl.models.rope import use_reference_rope_index

# Datasheet memory bandwidth (bytes/s) by a substring of torch.cuda.get_device_name().
_PEAK_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5 80 GB HBM3
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
]


def qwen25vl_3b_config(vocab_size: int = 151936) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-3B-Instruct's architecture (config.json of the released checkpoint)."""
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
        tie_word_embeddings=True,
    )


def tiny_bench_config(vocab_size: int = 151936) -> Qwen2_5_VLConfig:
    """A few-layer model of the same family (real token ids, head_dim 32) for smoke runs."""
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        tie_word_embeddings=True,
    )


def qwen2_1p5b_config() -> Qwen2Config:
    """Qwen2.5-1.5B's architecture (config.json of the released checkpoint; q/k/v biases are Qwen2's own)."""
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        bos_token_id=151643,
        eos_token_id=151643,
    )


def llama32_1b_config() -> LlamaConfig:
    """Llama-3.2-1B's architecture (config.json of the released checkpoint, its llama3 rope scaling too)."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 5e5,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
    )


def tiny_text_config(family: Literal["qwen2", "llama"]) -> PretrainedConfig:
    """The tiny model of text family ``family`` (``qwen2``, ``llama``): the one ``model.path=tiny``
    builds (``ModelFamily.tiny_config``), with its in-process tokenizer's vocabulary, and no EOS
    (the benchmarks ignore it: neither engine may stop at or suppress one)."""
    fam = family_named(family)
    config = fam.tiny_config(TinyModelConfig(family=family), fam.tiny_tokenizer(["longrl bench"], vocab_size=1024))
    config.eos_token_id = None
    return config


@overload
def random_model(
    config: Qwen2_5_VLConfig, device: torch.device | str = ..., dtype: torch.dtype = ..., seed: int = ...
) -> Qwen2_5_VLForConditionalGeneration: ...
@overload
def random_model(
    config: PretrainedConfig, device: torch.device | str = ..., dtype: torch.dtype = ..., seed: int = ...
) -> PreTrainedModel: ...
def random_model(
    config: PretrainedConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> Any:
    """The model of ``config``'s family (``longrl.models.family``) with transformers' random
    initialisation, built directly on ``device`` in ``dtype`` (sdpa attention; callers switch the
    text decoder to longrl's hook as they need), a Qwen2.5-VL with the M-RoPE rule every model
    longrl loads uses (longrl.models.rope)."""
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            if torch.device(device).type == "cuda":
                torch.cuda.manual_seed(seed)
            model = family_of(config).model_class()(config)
    finally:
        torch.set_default_dtype(default)
    if isinstance(model, Qwen2_5_VLForConditionalGeneration):
        use_reference_rope_index(model)
    return model


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def gpu_peak_bandwidth(device: torch.device | str | None = None) -> float | None:
    """Datasheet memory bandwidth in bytes/s of the CUDA device, or None (CPU / unknown card)."""
    name = device_name(device)
    return next((bw for key, bw in _PEAK_BANDWIDTH if key in name), None)


def measured_copy_bandwidth(device: torch.device | str = "cuda", gib: float = 2.0) -> float:
    """Achievable bandwidth (bytes read + written per second) of a large device-to-device copy."""
    src = torch.randn(int(gib * 2**30) // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1e3 / 10
    return 2 * src.numel() * 4 / seconds


def video_ids(cfg, n_video: int, generator: torch.Generator, high: int = 1000) -> torch.Tensor:
    """Chat-shaped prompt ids of a Qwen2.5-VL ``cfg``: 20 random text tokens (ids in [100, high)), the
    video block (start, ``n_video`` placeholders, end), 40 more text tokens."""

    def text(n: int) -> torch.Tensor:
        return torch.randint(100, high, (n,), generator=generator)

    video = torch.full((n_video,), cfg.video_token_id)
    start, end = torch.tensor([cfg.vision_start_token_id]), torch.tensor([cfg.vision_end_token_id])
    return torch.cat([text(20), start, video, end, text(40)])
