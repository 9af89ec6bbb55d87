"""Wan 2.1 text to video through diffusers (issue 17): the ODE limit of the sampler equals
``WanPipeline`` on a tiny random model (fp32, CPU), n clips per prompt in one batch with log-probs,
and a short Flow-GRPO run under a frame reward that trains and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from longrl.config_utils import ConfigError  # noqa: E402
from longrl.gen.config import load_gen_config  # noqa: E402
from longrl.gen.models import FlowPolicy, tiny_wan_pipeline  # noqa: E402
from longrl.gen.sampler import sample  # noqa: E402
from longrl.gen.sde import gaussian_log_prob, sde_transition  # noqa: E402


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    pipe = tiny_wan_pipeline(seed=0, resolution=32, frames=5)
    pipe.set_progress_bar_config(disable=True)
    return FlowPolicy(pipe, "wan", resolution=32, max_text_tokens=16, frames=5)


def test_built_modules_are_in_eval_mode(policy):
    for module in (policy.pipe.text_encoder, policy.pipe.vae, policy.pipe.transformer):
        assert not any(m.training for m in module.modules())


def test_zero_noise_equals_the_wan_pipeline(policy):
    prompts = ["a red cat", "a photo of a blue house"]
    latents = torch.randn(policy.latent_shape(2), generator=torch.Generator().manual_seed(3))
    assert latents.shape == (2, 4, 2, 4, 4)  # [B, C, 1 + (5 - 1) / 4, 32 / 8, 32 / 8]
    cond = policy.cond(prompts, 1, "")
    assert cond.pooled is None and cond.neg_pooled is None
    ours = sample(policy, cond, num_steps=5, noise_level=0.0, guidance_scale=4.5, latents=latents)
    # The cached embeddings are the pipeline's encode_prompt (to float rounding: batch shapes differ) ...
    embeds, neg = policy.pipe.encode_prompt(
        prompts, negative_prompt="", do_classifier_free_guidance=True, max_sequence_length=16
    )
    torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(cond.neg_embeds, neg, rtol=0, atol=1e-5)
    # ... and given the same embeddings and starting latents, the ODE sampler is the pipeline, to the bit:
    # latents, and frames decoded after the VAE's latents_mean / latents_std de-normalization.
    given = dict(
        prompt_embeds=cond.embeds, negative_prompt_embeds=cond.neg_embeds, height=32, width=32, num_frames=5,
        num_inference_steps=5, guidance_scale=4.5,
    )  # fmt: skip
    theirs = policy.pipe(**given, latents=latents.clone(), output_type="latent").frames
    assert torch.equal(ours.final, theirs)
    frames = policy.pipe(**given, latents=latents.clone(), output_type="np").frames
    assert frames.shape == (2, 5, 32, 32, 3)
    decoded = policy.decode(ours.final)
    assert decoded.dtype == torch.uint8
    assert torch.equal(decoded, torch.from_numpy((frames * 255).round().astype("uint8")))
    # The de-normalization is not the identity here, so it is what made the frames agree.
    assert policy.pipe.vae.config.latents_mean != [0.0] * 4 and policy.pipe.vae.config.latents_std != [1.0] * 4


def test_n_clips_per_prompt_in_one_batch_with_log_probs(policy):
    cond = policy.cond(["a red cat", "a green tree"], 3, "")
    traj = sample(
        policy, cond, num_steps=4, noise_level=0.7, guidance_scale=4.5, generator=torch.Generator().manual_seed(0)
    )
    assert traj.latents.shape == (6, 5, 4, 2, 4, 4) and traj.log_probs.shape == (6, 4)
    assert torch.isfinite(traj.log_probs).all()
    assert not torch.equal(traj.final[0], traj.final[1])
    assert torch.equal(cond.embeds[0], cond.embeds[2]) and not torch.equal(cond.embeds[0], cond.embeds[3])
    j = 1
    sigmas = traj.sigmas
    v = policy.velocity(traj.latents[:, j], float(sigmas[j]), cond, 4.5).float()
    mean, std = sde_transition(traj.latents[:, j], v, float(sigmas[j]), float(sigmas[j + 1]), 0.7, float(sigmas[1]))
    torch.testing.assert_close(gaussian_log_prob(traj.latents[:, j + 1], mean, std), traj.log_probs[:, j])
    assert policy.decode(traj.final[:2]).shape == (2, 5, 32, 32, 3)


def test_frames_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"gen\.frames=6 must be 1 \+ 4k"):
        load_gen_config(None, ["model.kind=wan", "gen.frames=6"])
    with pytest.raises(ConfigError, match=r"gen\.frames=5: model\.kind=sd3 makes images"):
        load_gen_config(None, ["gen.frames=5"])
    assert load_gen_config(None, ["model.kind=wan", "gen.frames=9"]).gen.frames == 9
    # The VAE fit is for the tiny Wan only: elsewhere the key would be ignored, so it is refused.
    with pytest.raises(ConfigError, match=r"model\.tiny_vae_fit_steps=200 fits the tiny Wan VAE only"):
        load_gen_config(None, ["model.tiny_vae_fit_steps=200"])
    with pytest.raises(ConfigError, match=r"model\.kind=wan and model\.name=tiny \(here wan, '/x'\)"):
        load_gen_config(None, ["model.kind=wan", "gen.frames=5", "model.name=/x", "model.tiny_vae_fit_steps=200"])
    assert load_gen_config(None, ["model.kind=wan", "gen.frames=5", "model.tiny_vae_fit_steps=200"])


def test_short_run_under_a_frame_reward_trains_and_checkpoints(tmp_path):
    from longrl.gen.train import train_gen

    torch.set_num_threads(1)
    out = tmp_path / "wan"
    cfg = load_gen_config(None, [
        "model.kind=wan", "gen.frames=5", "gen.n=2", "gen.prompts_per_step=2", "gen.mini_batches=1",
        "gen.num_steps=3", "gen.eval_steps=3", "gen.train_timesteps=2", "gen.eval_prompts=2", "gen.grid_samples=2",
        "gen.kl_coef=0.04", "steps=2", "optim.lr=1e-2", "reward.functions=[brightness]", "trainer.save_every=1",
        "trainer.progress=false", "trainer.tensorboard=false", "trainer.log_every=1", f"trainer.out_dir={out}",
    ])  # fmt: skip
    start = tiny_wan_pipeline(seed=0).transformer.state_dict()
    report = train_gen(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["reward/brightness"] <= 1 for r in rows)
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    assert (out / "samples" / "step_2.png").is_file() and [e[0] for e in report["evals"]] == [0, 2]
    from diffusers import WanPipeline

    trained = WanPipeline.from_pretrained(out / "model").transformer.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # the steps moved the weights


def test_quickstart_wan_is_the_gen_quickstart_with_wan_keys(tmp_path, capsys):
    from longrl.gen.quickstart import MIN_GAIN, gen_quickstart

    tiny = ["steps=1", "gen.n=2", "gen.prompts_per_step=2", "gen.mini_batches=1", "gen.num_steps=2",
            "gen.eval_steps=2", "gen.train_timesteps=1", "gen.eval_prompts=2", "gen.grid_samples=1"]  # fmt: skip
    (report,) = gen_quickstart(str(tmp_path), [0], tiny, kind="wan")
    saved = load_gen_config(tmp_path / "seed_0" / "config.yaml")
    assert saved.model.kind == "wan" and saved.gen.frames == 5 and saved.gen.kl_coef == 0
    assert report["seed"] == 0 and report["gain"] == report["after"] - report["before"]
    table = (tmp_path / "sweep.md").read_text()
    assert table.splitlines()[2].startswith("| 0 |") and ("met" in table or f"gain < {MIN_GAIN['wan']}" in table)
    assert "held-out brightness" in capsys.readouterr().out


def test_fitted_tiny_vae_lets_latents_set_brightness():
    """The quickstart's tiny Wan VAE is fitted first (model.tiny_vae_fit_steps): its clips' mean brightness
    then varies with the latents many times more than the random decoder's (notes/log/gen.md)."""

    def brightness_sd(pipe):
        z = torch.randn(16, 4, 2, 4, 4, generator=torch.Generator().manual_seed(123))
        with torch.no_grad():
            clips = pipe.vae.decode(z, return_dict=False)[0]
        return ((clips / 2 + 0.5).clamp(0, 1)).mean(dim=(1, 2, 3, 4)).std().item()

    random_sd = brightness_sd(tiny_wan_pipeline(seed=0, resolution=32, frames=5))
    fitted = tiny_wan_pipeline(seed=0, resolution=32, frames=5, vae_fit_steps=200)
    fitted_sd = brightness_sd(fitted)
    assert random_sd < 0.01 and fitted_sd > 0.04, (random_sd, fitted_sd)
    assert not any(p.requires_grad for p in fitted.vae.parameters())
