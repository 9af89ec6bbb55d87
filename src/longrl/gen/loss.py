"""Flow-GRPO's objective over the sampled transitions, on longrl's RL estimators.

Each denoising transition of a trajectory is one "token": its log-probability is the SDE's Gaussian
(``sde.py``), its advantage the trajectory's group-normalized reward, so the clipped-ratio loss is
``longrl.rl.losses.policy_loss`` on [B, k] tensors (k trained timesteps) with token-mean
aggregation: mean over samples and timesteps of max(-A r, -A clip(r, 1 +- eps)), exactly Flow-GRPO's
per-step loss averaged over its timesteps. The KL term is not ``policy_loss``'s (a k1/k2/k3 estimate
from log-probs): Flow-GRPO uses the closed form between the two Gaussian transitions, which share
their std, KL = ||mean - mean_ref||^2 / (2 std^2) per latent element (averaged like the log-prob).
"""

from __future__ import annotations

from torch import Tensor

from longrl.gen.config import GenConfig
from longrl.rl import AlgorithmConfig, compute_advantages, policy_loss


def algorithm_config(cfg: GenConfig) -> AlgorithmConfig:
    """The longrl.rl settings Flow-GRPO's loss is: symmetric clip, token mean, no KL inside policy_loss."""
    return AlgorithmConfig(
        advantage=cfg.advantage, clip_ratio_low=cfg.clip_range, clip_ratio_high=cfg.clip_range, kl_coef=0.0
    )


def group_advantages(rewards: Tensor, n: int, cfg: GenConfig) -> Tensor:
    """[B] rewards in prompt-major order (n per prompt) -> [B] advantages, clipped to +- adv_clip."""
    adv = compute_advantages(algorithm_config(cfg), rewards.view(-1, n))
    return adv.clamp(-cfg.adv_clip, cfg.adv_clip)


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean, std^2) || N(ref_mean, std^2)) per latent element, averaged per sample: [B]."""
    per_element = (mean - ref_mean.detach()) ** 2 / (2 * std**2)
    return per_element.mean(dim=tuple(range(1, per_element.dim())))


def flow_grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    cfg: GenConfig,
    *,
    normalizer: float,
    kl: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Loss over logp/old_logp [B, k] (k timesteps) and advantages [B]; ``kl`` [B, k] from
    :func:`gaussian_kl` when ``cfg.kl_coef`` > 0. ``normalizer``: the number of (sample, timestep)
    pairs of the whole optimizer step, so the micro-batch losses sum to the step's mean."""
    mask = logp.new_ones(logp.shape, dtype=logp.dtype)
    loss, metrics = policy_loss(logp, old_logp, advantages, mask, algorithm_config(cfg), normalizer=normalizer)
    if cfg.kl_coef > 0:
        if kl is None:
            raise ValueError("gen.kl_coef > 0 needs the KL to the reference per transition (gaussian_kl)")
        kl_loss = kl.sum() / normalizer
        loss = loss + cfg.kl_coef * kl_loss
        metrics["kl_loss"] = float(kl_loss.detach())
        metrics["loss"] = float(loss.detach())
    return loss, metrics
