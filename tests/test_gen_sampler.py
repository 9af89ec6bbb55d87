"""The generation path's sampler: SDE transitions, their log-probabilities, and the ODE limit
equal to diffusers' own pipeline (tiny random SD3, fp32, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from longrl.gen.models import FlowPolicy, tiny_sd3_pipeline  # noqa: E402
from longrl.gen.sampler import sample  # noqa: E402
from longrl.gen.sde import gaussian_log_prob, sde_step, sde_transition  # noqa: E402


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return FlowPolicy(tiny_sd3_pipeline(seed=0), "sd3", resolution=32, max_text_tokens=16)


def test_transition_log_prob_is_the_gaussian_density_by_hand():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    sigma, sigma_next, a = 0.6, 0.45, 0.7
    x_next, logp = sde_step(x, v, sigma, sigma_next, a, sigma_max=0.95, generator=g)
    # By hand: sigma_t = a sqrt(s / (1 - s)); mean = x + [v + sigma_t^2/(2s) (x + (1-s) v)] dt; std = sigma_t sqrt(-dt).
    dt = sigma_next - sigma
    sigma_t = a * math.sqrt(sigma / (1 - sigma))
    mean = x + (v + sigma_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    std = sigma_t * math.sqrt(-dt)
    density = torch.exp(-((x_next - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))
    torch.testing.assert_close(logp, density.log().mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    # The same transition scored again (as training does) gives the same log-probability, to the bit.
    mean2, std2 = sde_transition(x, v, sigma, sigma_next, a, 0.95)
    assert torch.equal(gaussian_log_prob(x_next, mean2, std2), logp)


def test_first_step_at_sigma_one_uses_sigma_max():
    x, v = torch.zeros(1, 2), torch.ones(1, 2)
    mean, std = sde_transition(x, v, 1.0, 0.9, 0.5, sigma_max=0.9)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert float(std) == pytest.approx(0.5 * math.sqrt(1.0 / (1 - 0.9)) * math.sqrt(0.1), rel=1e-5)


def test_zero_noise_equals_the_diffusers_pipeline(policy):
    prompts = ["a red cat", "a photo of a blue house"]
    latents = torch.randn(policy.latent_shape(2), generator=torch.Generator().manual_seed(3))
    cond = policy.cond(prompts, 1, "")
    ours = sample(policy, cond, num_steps=5, noise_level=0.0, guidance_scale=4.5, latents=latents)
    # The cached embeddings are the pipeline's encode_prompt (to float rounding: batch shapes differ) ...
    embeds, neg, pooled, neg_pooled = policy.pipe.encode_prompt(
        prompts, prompts, prompts, negative_prompt="", do_classifier_free_guidance=True, max_sequence_length=16
    )
    for mine, theirs in (
        (cond.embeds, embeds),
        (cond.neg_embeds, neg),
        (cond.pooled, pooled),
        (cond.neg_pooled, neg_pooled),
    ):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    # ... and given the same embeddings and starting noise, the ODE sampler is the pipeline, to the bit.
    given = dict(
        prompt_embeds=cond.embeds, negative_prompt_embeds=cond.neg_embeds, pooled_prompt_embeds=cond.pooled,
        negative_pooled_prompt_embeds=cond.neg_pooled, height=32, width=32, num_inference_steps=5, guidance_scale=4.5,
    )  # fmt: skip
    theirs = policy.pipe(**given, latents=latents.clone(), output_type="latent").images
    assert torch.equal(ours.final, theirs)
    pixels = policy.pipe(**given, latents=latents.clone(), output_type="np").images
    assert torch.equal(policy.decode(ours.final), torch.from_numpy((pixels * 255).round().astype("uint8")))
    # From the prompts themselves (the pipeline encodes them again), the samples agree to float rounding.
    from_text = policy.pipe(
        prompts, height=32, width=32, num_inference_steps=5, guidance_scale=4.5, latents=latents.clone(),
        output_type="latent", max_sequence_length=16,
    ).images  # fmt: skip
    torch.testing.assert_close(ours.final, from_text, rtol=1e-4, atol=1e-4)


def test_n_samples_per_prompt_in_one_batch_with_log_probs(policy):
    cond = policy.cond(["a red cat", "a green tree"], 3, "")
    traj = sample(
        policy, cond, num_steps=4, noise_level=0.7, guidance_scale=4.5, generator=torch.Generator().manual_seed(0)
    )
    assert traj.latents.shape == (6, 5, 4, 4, 4) and traj.log_probs.shape == (6, 4)
    assert torch.isfinite(traj.log_probs).all()
    # The samples of one prompt differ (the SDE's noise), and the group rows share the prompt's embeddings.
    assert not torch.equal(traj.final[0], traj.final[1])
    assert torch.equal(cond.embeds[0], cond.embeds[2]) and not torch.equal(cond.embeds[0], cond.embeds[3])
    # Replaying transition j under the same weights gives the sampled log-probability back.
    j = 2
    sigmas = traj.sigmas
    v = policy.velocity(traj.latents[:, j], float(sigmas[j]), cond, 4.5).float()
    mean, std = sde_transition(traj.latents[:, j], v, float(sigmas[j]), float(sigmas[j + 1]), 0.7, float(sigmas[1]))
    torch.testing.assert_close(gaussian_log_prob(traj.latents[:, j + 1], mean, std), traj.log_probs[:, j])
