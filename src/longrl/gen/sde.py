"""The flow ODE turned into an SDE with the same marginals, one Gaussian transition per step.

Rectified flow runs x from noise (sigma = 1) to data (sigma = 0) along dx = v dt. Flow-GRPO
(arXiv 2505.05470, eq. 9) replaces it by the reverse-time SDE that keeps every marginal p_sigma:

    x_next = x + [v + sigma_t^2 / (2 sigma) * (x + (1 - sigma) v)] dt + sigma_t sqrt(-dt) eps,
    sigma_t = a * sqrt(sigma / (1 - sigma)),  dt = sigma_next - sigma < 0,

so each step is x_next ~ N(mean, std^2 I) with std = sigma_t sqrt(-dt): a policy whose log-density
GRPO can take the ratio of. ``a`` is ``gen.noise_level``; at a = 0 the mean is the Euler ODE step.
The log-probability is the *mean* over latent elements, as Flow-GRPO logs it: the ratio then
moves on the scale of one element, which is why its clip range is 1e-4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _expand(value: Tensor | float, like: Tensor) -> Tensor:
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def sde_transition(
    sample: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, noise_level: float,
    sigma_max: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Mean and std of x_next given x = ``sample`` and the model's ``velocity``, in float32.

    ``sigma``/``sigma_next``: floats or [B] tensors. ``sigma_max``: the schedule's largest sigma below 1,
    used in place of sigma at sigma = 1, where sigma / (1 - sigma) is infinite (Flow-GRPO does the same).
    """
    x, v = sample.float(), velocity.float()
    s, s_next = _expand(sigma, x), _expand(sigma_next, x)
    dt = s_next - s
    std_t = noise_level * torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s)))
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    return mean, (std_t * torch.sqrt(-dt)).expand_as(s)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std^2), averaged over every axis but the first: [B]."""
    logp = -((x.detach().float() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return logp.mean(dim=tuple(range(1, logp.dim())))


def euler_step(sample: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """The ODE step, as diffusers' FlowMatchEulerDiscreteScheduler computes it (in float32)."""
    x = sample.float()
    return x + (_expand(sigma_next, x) - _expand(sigma, x)) * velocity


def sde_step(
    sample: Tensor, velocity: Tensor, sigma: float, sigma_next: float, noise_level: float, sigma_max: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One sampling step: (x_next, its log-probability [B]). At noise_level 0, the Euler step and a
    log-probability of 0 (a deterministic transition has no density to report)."""
    if noise_level == 0:
        return euler_step(sample, velocity, sigma, sigma_next), torch.zeros(sample.shape[0])
    mean, std = sde_transition(sample, velocity, sigma, sigma_next, noise_level, sigma_max)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    x_next = mean + std * noise
    return x_next, gaussian_log_prob(x_next, mean, std)
