"""The Flow-GRPO update of one RL step: replay the trained transitions with gradients, the clipped
ratio loss (``loss.py``), gradients accumulated over timesteps and micro-batches, one optimizer step
per mini-batch of whole prompt groups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from longrl.gen.config import GenConfig
from longrl.gen.loss import flow_grpo_loss, gaussian_kl
from longrl.gen.models import Cond, FlowPolicy
from longrl.gen.sampler import Trajectory
from longrl.gen.sde import gaussian_log_prob, sde_transition
from longrl.infra.guard import NonFiniteGuard


@contextmanager
def adapters_off(transformer: nn.Module) -> Iterator[None]:
    """The LoRA model with its adapters disabled is the reference policy: no second copy of the weights."""
    transformer.disable_adapters()  # type: ignore[operator]
    try:
        yield
    finally:
        transformer.enable_adapters()  # type: ignore[operator]


class Reference:
    """The frozen initial policy of the KL term: a copy for full fine-tuning, the adapter-free base for LoRA."""

    def __init__(self, policy: FlowPolicy, lora: bool):
        self.lora = lora
        self.copy = None if lora else _frozen_copy(policy.transformer)

    def context(self, policy: FlowPolicy) -> tuple[nn.Module, AbstractContextManager]:
        if self.lora:
            return policy.transformer, adapters_off(policy.transformer)
        assert self.copy is not None
        return self.copy, nullcontext()


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    ref = copy.deepcopy(module).eval()
    ref.requires_grad_(False)
    return ref


def replay(
    policy: FlowPolicy, traj: Trajectory, cond: Cond, rows: Tensor, j: int, cfg: GenConfig, transformer=None
) -> tuple[Tensor, Tensor, Tensor]:
    """Transition j of the trajectories ``rows`` under the current weights: (log-prob [b], mean, std)."""
    sigmas = traj.sigmas
    sigma, sigma_next, sigma_max = float(sigmas[j]), float(sigmas[j + 1]), float(sigmas[1])
    x = traj.latents[rows, j]
    v = policy.velocity(x, sigma, cond.take(rows), cfg.guidance_scale, transformer).float()
    mean, std = sde_transition(x, v, sigma, sigma_next, cfg.noise_level, sigma_max)
    return gaussian_log_prob(traj.latents[rows, j + 1], mean, std), mean, std


def policy_update(
    policy: FlowPolicy,
    traj: Trajectory,
    cond: Cond,
    advantages: Tensor,
    cfg: GenConfig,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    *,
    grad_clip: float,
    guard: NonFiniteGuard,
    step: int,
    reference: Reference | None = None,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """``gen.train_timesteps`` of the sampled transitions (drawn from the global RNG, so a resumed run
    draws the same), ``gen.mini_batches`` optimizer steps, each over whole prompt groups."""
    batch, num_steps = traj.log_probs.shape
    timesteps = torch.randperm(num_steps)[: cfg.train_timesteps].sort().values.tolist()
    groups = torch.arange(batch).view(-1, cfg.n)  # prompt-major: row g is group g's samples
    sums: dict[str, float] = defaultdict(float)
    for mini in groups.chunk(cfg.mini_batches):
        rows_all = mini.reshape(-1)
        normalizer = float(rows_all.numel() * len(timesteps))
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for j in timesteps:  # gradient accumulation over timesteps and micro-batches
            for rows in rows_all.split(cfg.micro_batch):
                logp, mean, std = replay(policy, traj, cond, rows, j, cfg)
                kl = None
                if reference is not None and cfg.kl_coef > 0:
                    ref_model, ctx = reference.context(policy)
                    with torch.no_grad(), ctx:
                        _, ref_mean, _ = replay(policy, traj, cond, rows, j, cfg, ref_model)
                    kl = gaussian_kl(mean, ref_mean, std)[:, None]
                old = traj.log_probs[rows, j][:, None]
                loss, metrics = flow_grpo_loss(logp[:, None], old, advantages[rows], cfg, normalizer=normalizer, kl=kl)
                loss.backward()
                total += float(loss.detach())
                share = rows.numel() / (normalizer * cfg.mini_batches)  # this call's share of the step's pairs
                for key in ("clip_frac_low", "clip_frac_high", "approx_kl", "ratio_mean"):
                    sums[key] += metrics[key] * share
                if kl is not None:
                    sums["kl"] += float(kl.detach().mean()) * share
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        if guard.check(total, grad_norm, step=step):
            optimizer.step()
            if after_step is not None:
                after_step()
        sums["loss"] += total / cfg.mini_batches
        sums["grad_norm"] += float(grad_norm) / cfg.mini_batches
    sums["clip_frac"] = sums["clip_frac_low"] + sums["clip_frac_high"]
    return dict(sums)
