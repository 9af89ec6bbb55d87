"""Published settings of each algorithm, as `AlgorithmConfig` field values.

Every preset names all the fields that define an algorithm, so applying one preset over another
leaves nothing of the first behind. Schedule fields (ppo_epochs, mini_batches, max_tries) are left
as the caller set them.

Dual-clip PPO (Ye et al., 2019, arXiv:1912.09729) is off in every preset (`dual_clip_c=0`), as in
the papers. verl applies it by default (clip_ratio_c = 3.0): set `algorithm.dual_clip_c=3.0` to
compare with verl; the loss of a negative-advantage token is then capped at -3 * A, so a token
whose ratio passed 3 gives no gradient.

DAPO's dynamic sampling (`dynamic_sampling=True`, `longrl.rl.dynamic_sampling`): a group is dropped
when all its rewards are equal (max - min <= 1e-6, after the overlong penalty; a group of one
sample too), since its advantages are all 0. Each further round draws `rl.prompts_per_step` new
prompts; a step runs at most `algorithm.max_tries` rounds (default 3, the first included) and keeps
the first `rl.prompts_per_step` informative groups (the surplus is discarded). A batch still short
after the last round is trained as it is, with a warning naming the counts; a step that found no
informative group makes no update and only logs (`rollout/groups_kept` = 0).
"""

from __future__ import annotations

import dataclasses

from longrl.rl.config import MAX_RESPONSE_LEN, AlgorithmConfig

# Plain PPO-clip GRPO: the base every preset edits.
_BASE: dict = dict(
    advantage="grpo",
    norm_adv_by_std=True,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    dual_clip_c=0.0,
    importance="token",
    loss_agg="token_mean",
    token_sum_divisor=0.0,
    kl_coef=0.0,
    kl_estimator="k3",
    kl_in_reward=False,
    entropy_coef=0.0,
    dynamic_sampling=False,
    overlong_buffer=0,
    overlong_penalty=1.0,
)


def _preset(name: str, **changes) -> dict:
    unknown = set(changes) - set(_BASE)
    assert not unknown, f"preset {name} sets unknown fields {unknown}"
    return {"name": name, **_BASE, **changes}


PRESETS: dict[str, dict] = {
    # DeepSeekMath: group-normalized advantages, per-sequence token mean, KL to the reference as a
    # loss term with the unbiased k3 estimator, beta = 0.04.
    "grpo": _preset("grpo", loss_agg="seq_mean_token_mean", kl_coef=0.04, kl_estimator="k3"),
    # DAPO: clip-higher (0.2 / 0.28), token-level mean, dynamic sampling (drops groups whose
    # rewards are all equal, refills for up to max_tries rounds, else trains on a smaller batch),
    # soft overlong punishment with a 4096-token buffer (max response 20480), no KL.
    "dapo": _preset(
        "dapo",
        clip_ratio_high=0.28,
        loss_agg="token_mean",
        dynamic_sampling=True,
        overlong_buffer=int(MAX_RESPONSE_LEN),
        overlong_penalty=1.0,
    ),
    # Dr.GRPO: no std normalization, token sums divided by a constant (the maximum response length,
    # filled in by AlgorithmConfig.resolve), no KL.
    "drgrpo": _preset(
        "drgrpo",
        advantage="drgrpo",
        norm_adv_by_std=False,
        loss_agg="seq_mean_token_sum",
        token_sum_divisor=MAX_RESPONSE_LEN,
    ),
    # RLOO: leave-one-out baseline, the whole response is one action (token sum of log-probs),
    # sequence-level KL penalty folded into the reward (beta = 0.05, TRL's RLOO default).
    "rloo": _preset(
        "rloo",
        advantage="rloo",
        norm_adv_by_std=False,
        loss_agg="seq_mean_token_sum",
        kl_coef=0.05,
        kl_estimator="k1",
        kl_in_reward=True,
    ),
    # REINFORCE++: per-token k1 KL in the reward, return-to-go (gamma = 1), advantages whitened over
    # all response tokens of the batch (with or without KL, so kl_coef -> 0 is continuous);
    # beta = 0.01 (OpenRLHF's default).
    "reinforce_pp": _preset(
        "reinforce_pp",
        advantage="reinforce_pp",
        norm_adv_by_std=True,
        kl_coef=0.01,
        kl_estimator="k1",
        kl_in_reward=True,
    ),
    # GSPO: one length-normalized importance ratio per sequence, clip range 3e-4 / 4e-4, group
    # advantages, per-sequence token mean, no KL.
    "gspo": _preset(
        "gspo", importance="sequence", clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg="seq_mean_token_mean"
    ),
}

PAPERS: dict[str, str] = {
    "grpo": "DeepSeekMath (Shao et al., 2024), arXiv:2402.03300",
    "dapo": "DAPO (Yu et al., 2025), arXiv:2503.14476",
    "drgrpo": "Understanding R1-Zero-Like Training (Liu et al., 2025), arXiv:2503.20783",
    "rloo": "Back to Basics: REINFORCE-style optimization (Ahmadian et al., 2024), arXiv:2402.14740",
    "reinforce_pp": "REINFORCE++ (Hu, 2025), arXiv:2501.03262",
    "gspo": "Group Sequence Policy Optimization (Zheng et al., 2025), arXiv:2507.18071",
}


def apply_preset(cfg: AlgorithmConfig, name: str) -> AlgorithmConfig:
    """Returns a copy of `cfg` with preset `name`'s fields; apply user overrides after this."""
    if name not in PRESETS:
        raise ValueError(f"unknown algorithm preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, **PRESETS[name])


# Printed under the table: what no row shows because every preset leaves it at its default.
NOTES = (
    "Dual-clip PPO is off in every preset (`dual_clip_c=0`, as in the papers); verl applies it by "
    "default with clip_ratio_c = 3.0, so set `algorithm.dual_clip_c=3.0` to compare with verl (a "
    "negative-advantage token's loss is capped at -3 * A).",
    "DAPO's dynamic sampling drops a group when all its rewards are equal (max - min <= 1e-6, after "
    "the overlong penalty; a group of one sample too). Each further round draws `rl.prompts_per_step` "
    "new prompts, for at most `algorithm.max_tries` rounds per step (default 3, the first included); "
    "the first `rl.prompts_per_step` informative groups are kept. A batch still short after the last "
    "round is trained as it is, with a warning naming the counts; with no informative group the step "
    "makes no update and only logs (`rollout/groups_kept` = 0).",
)


def presets_markdown() -> str:
    """The README's preset table (the fields each preset sets away from plain GRPO) and its notes."""
    defaults = {f.name: f.default for f in dataclasses.fields(AlgorithmConfig)}
    lines = ["| preset | settings | paper |", "| --- | --- | --- |"]
    for name, preset in PRESETS.items():
        changed = [
            f"`{key}={_show(key, value)}`" for key, value in preset.items() if key != "name" and value != defaults[key]
        ]
        lines.append(f"| `{name}` | {', '.join(changed) or 'defaults'} | {PAPERS[name]} |")
    return "\n".join(lines) + "\n\n" + "\n\n".join(NOTES) + "\n"


def _show(key: str, value) -> str:
    if key == "token_sum_divisor" and value == MAX_RESPONSE_LEN:
        return "max_response_len"
    if key == "overlong_buffer" and value == int(MAX_RESPONSE_LEN):
        return "0.2*max_response_len"
    return str(value)
