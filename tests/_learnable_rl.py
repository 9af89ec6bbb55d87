"""The learnable-reward GRPO check shared by the image and Omni tests: a reward the policy can reach
from a random init (the response starts with a lower-case letter), 12 steps, and the assertion that
it rose and the run checkpointed."""

from __future__ import annotations

import json
from pathlib import Path

STEPS = 12


def learnable_rl_overrides(tmp_path: Path) -> list[str]:
    """Config overrides of the check; writes its reward function under ``tmp_path``."""
    reward_file = tmp_path / "lower_first.py"
    reward_file.write_text(
        "def lower_first(sample):\n    text = sample.response.lstrip()\n    return 1.0 if text[:1].islower() else 0.0\n"
    )
    return [
        "trainer.progress=false",
        f"reward.functions=['{reward_file}:lower_first']",
        f"rl.steps={STEPS}",
        "rl.prompts_per_step=4",
        "rollout.n=8",
        "rollout.max_new_tokens=4",
        "rl.optim.lr=0.02",
        "rl.optim.warmup_steps=0",
        "algorithm.kl_coef=0",
        "trainer.log_every=100",
    ]


def assert_reward_rose(run_dir: Path) -> None:
    """The mean reward of the last 3 steps beats the first 3 by 0.2, and the last step checkpointed."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [line["reward/mean"] for line in lines]
    assert len(rewards) == STEPS and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    assert (run_dir / "checkpoints" / f"step_{STEPS}").is_dir()
