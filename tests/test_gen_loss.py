"""Flow-GRPO's loss on longrl's estimators equals a transcription of Flow-GRPO's training step
(train_sd3.py: clipped ratio per timestep, closed-form Gaussian KL to the reference), values and
gradients, on identical tensors; and the image rewards score pixels as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longrl.gen.config import GenConfig
from longrl.gen.loss import flow_grpo_loss, gaussian_kl, group_advantages
from longrl.rewards.model import build_reward
from longrl.rewards.registry import RewardInput


def flow_grpo_reference(log_prob, old_log_prob, advantages, mean, ref_mean, std, clip_range, beta, adv_clip_max):
    """Transcribed from Flow-GRPO: per timestep j, the loss of the batch; the timesteps' losses are
    averaged (its gradient accumulation over the trained timesteps). std: the transition's std."""
    losses = []
    for j in range(log_prob.shape[1]):
        adv = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
        ratio = torch.exp(log_prob[:, j] - old_log_prob[:, j])
        unclipped_loss = -adv * ratio
        clipped_loss = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
        kl_loss = ((mean[:, j] - ref_mean[:, j]) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std[:, j] ** 2)
        losses.append(policy_loss + beta * torch.mean(kl_loss))
    return torch.stack(losses).mean()


def test_loss_equals_flow_grpo_transcription_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    B, k = 6, 3
    cfg = GenConfig(n=3, clip_range=0.05, kl_coef=0.04, adv_clip=1.5)
    old = torch.randn(B, k, generator=g) * 0.1
    # ratios inside and outside the clip range, both signs of advantage
    logp = (old + torch.randn(B, k, generator=g) * 0.08).requires_grad_(True)
    mean = torch.randn(B, k, 4, 2, 2, generator=g).requires_grad_(True)
    ref_mean = mean.detach() + 0.1 * torch.randn(B, k, 4, 2, 2, generator=g)
    std = torch.rand(B, k, 1, 1, 1, generator=g) + 0.2
    adv = torch.randn(B, generator=g) * 2  # some beyond adv_clip

    theirs = flow_grpo_reference(logp, old, adv, mean, ref_mean, std, 0.05, 0.04, 1.5)
    kl = torch.stack([gaussian_kl(mean[:, j], ref_mean[:, j], std[:, j]) for j in range(k)], 1)
    ours, metrics = flow_grpo_loss(logp, old, adv.clamp(-1.5, 1.5), cfg, normalizer=B * k, kl=kl)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    grads_theirs = torch.autograd.grad(theirs, [logp, mean])
    grads_ours = torch.autograd.grad(ours, [logp, mean])
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert 0 < metrics["clip_frac_low"] + metrics["clip_frac_high"] < 1

    # Accumulating one timestep (and half the batch) at a time sums to the same loss.
    parts = [
        flow_grpo_loss(logp[r, j : j + 1], old[r, j : j + 1], adv.clamp(-1.5, 1.5)[r], cfg, normalizer=B * k,
                       kl=kl[r, j : j + 1])[0]
        for j in range(k) for r in (slice(0, 3), slice(3, 6))
    ]  # fmt: skip
    torch.testing.assert_close(torch.stack(parts).sum(), ours, rtol=1e-6, atol=1e-7)


def test_group_advantages_are_per_prompt_and_clipped():
    cfg = GenConfig(n=4, adv_clip=1.0)
    rewards = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 5.0, 5.0, 9.0])
    adv = group_advantages(rewards, 4, cfg)
    assert adv[:4].sum().abs() < 1e-6 and (adv[:4].diff() > 0).all()  # centred within its group, ordered
    assert float(adv[7]) == 1.0 and float(adv[4]) == pytest.approx(-0.5, abs=1e-5)  # clipped; group of 3 equal + 1


def _inputs(images, prompt="a photo of a red apple in the garden"):
    return [
        RewardInput(sample_id=str(i), response="", answer="", question=prompt, row={"image": im})
        for i, im in enumerate(images)
    ]


def test_image_rewards_score_pixels_and_failures_fall_back():
    import longrl.gen.rewards  # noqa: F401  (registers them)
    from longrl.rewards.config import RewardConfig

    dark, bright = np.full((8, 8, 3), 20, np.uint8), np.full((8, 8, 3), 230, np.uint8)
    red = np.tile(np.array([220, 30, 30], np.uint8), (8, 8, 1))
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    model = build_reward(
        RewardConfig(functions=["brightness", "target_color", "jpeg_compressibility"], weights=[1, 1, 1])
    )
    res = model(_inputs([dark, bright, red, noise]))
    b = [r.components["brightness"] for r in res]
    assert b[0] == pytest.approx(20 / 255) and b[1] == pytest.approx(230 / 255)
    assert res[2].components["target_color"] == pytest.approx(1.0) and res[0].components["target_color"] < 0.8
    assert (
        res[3].components["jpeg_compressibility"] < res[0].components["jpeg_compressibility"]
    )  # noise compresses worst
    # A prompt without a colour word: target_color raises, scores the fallback, and is counted.
    res = model(_inputs([dark], prompt="a photo of a cat"))
    assert res[0].error is not None and res[0].components["target_color"] == 0.0
    assert model.pop_metrics()["reward/fallback_frac"] == pytest.approx(0.2)
