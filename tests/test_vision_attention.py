"""The vision tower with batched window attention == transformers' per-window path (tiny fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import random_model, tiny_bench_config
from longrl.models.inputs import VisionInputs
from longrl.models.qwen2_5_vl import encode_video
from longrl.models.vision_attention import equal_runs, transformers_vision_attention


def test_equal_runs():
    assert equal_runs([64, 64, 0, 64, 32]) == [(64, 3), (32, 1)]
    assert equal_runs([5, 6, 5]) == [(5, 1), (6, 1), (5, 1)]
    assert equal_runs([]) == [] and equal_runs([0, 0]) == []


@pytest.mark.parametrize("grid", [(3, 16, 16), (2, 12, 20), (1, 4, 6)])  # equal windows; ragged edge windows; one
def test_batched_tower_matches_transformers(grid):
    torch.manual_seed(0)
    model = random_model(tiny_bench_config())
    vc = model.config.vision_config
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    thw = torch.tensor([grid])
    pixels = torch.randn(int(thw.prod()), patch)
    vision = VisionInputs(pixels, thw, 1.0)
    model.model.visual.requires_grad_(True)
    ref = encode_video(model, vision, batched_attention=False)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.model.visual.named_parameters()}
    model.zero_grad(set_to_none=True)
    out = encode_video(model, vision)
    out.square().sum().backward()
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    for n, p in model.model.visual.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5), n
    # installed for good by encode_video; taken out for a block only
    attn = model.model.visual.blocks[0].attn
    assert "forward" in attn.__dict__
    with transformers_vision_attention(model.model.visual):
        assert "forward" not in attn.__dict__
    assert "forward" in attn.__dict__


def test_batched_tower_under_activation_checkpointing():
    """A checkpointed tower recomputes its blocks in backward, after encode_video has returned: the
    recompute runs the same (batched) attention, and the gradients equal transformers' own."""
    torch.manual_seed(0)
    model = random_model(tiny_bench_config())
    model.model.visual.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    vc = model.config.vision_config
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    thw = torch.tensor([(2, 12, 20)])
    vision = VisionInputs(torch.randn(int(thw.prod()), patch), thw, 1.0)
    model.model.visual.requires_grad_(True)
    model.model.visual.gradient_checkpointing_disable()  # the reference: transformers' path, no recompute
    with transformers_vision_attention(model.model.visual):
        ref = model.model.visual(vision.pixel_values, grid_thw=thw).pooler_output
        ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.model.visual.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.model.visual.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    out = encode_video(model, vision)
    out.square().sum().backward()  # raises CheckpointError if the recompute ran other code
    for n, p in model.model.visual.named_parameters():
        assert torch.allclose(p.grad, ref_grads[n], rtol=1e-4, atol=1e-5), n
