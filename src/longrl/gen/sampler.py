"""Sampling with log-probabilities: n samples per prompt in one batch, the SDE of ``sde.py`` at every
step, classifier-free guidance, and every latent kept so training can replay each transition."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from longrl.gen.models import Cond, FlowPolicy
from longrl.gen.sde import sde_step


@dataclass
class Trajectory:
    latents: Tensor  # [B, S + 1, ...] x_0 (noise) ... x_S (the sample), float32
    log_probs: Tensor  # [B, S] log p(x_{j+1} | x_j) under the sampling policy (per-element mean)
    sigmas: Tensor  # [S + 1], from 1 down to 0

    @property
    def final(self) -> Tensor:
        return self.latents[:, -1]


@torch.no_grad()
def sample(
    policy: FlowPolicy,
    cond: Cond,
    *,
    num_steps: int,
    noise_level: float,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    latents: Tensor | None = None,
) -> Trajectory:
    """One trajectory per row of ``cond``. ``latents``: the starting noise (drawn from ``generator``, or
    the global RNG, when None). Noise is drawn on the CPU, so a seed gives the same samples on any device."""
    device = cond.embeds.device
    batch = cond.embeds.shape[0]
    if latents is None:
        latents = torch.randn(policy.latent_shape(batch), generator=generator, dtype=torch.float32)
    x = latents.float().to(device)
    sigmas = policy.sigmas(num_steps)
    sigma_max = float(sigmas[1]) if len(sigmas) > 2 else float(sigmas[0])
    states, log_probs = [x], []
    for j in range(num_steps):
        sigma, sigma_next = float(sigmas[j]), float(sigmas[j + 1])
        v = policy.velocity(x, sigma, cond, guidance_scale).float()
        x, logp = sde_step(x, v, sigma, sigma_next, noise_level, sigma_max, generator)
        states.append(x)
        log_probs.append(logp.to(device))
    return Trajectory(torch.stack(states, 1), torch.stack(log_probs, 1), sigmas)
