"""REINFORCE++ under data parallelism: 2 gloo ranks, each holding half of the step's groups (as the
sampler deals them: global groups 0, 2 on rank 0, 1, 3 on rank 1), whiten over the global batch and
get the advantages (and the logged KL) one process computes over all four groups."""

from __future__ import annotations

import json
import os

import torch

from _dist import spawn

CASES = {
    "kl_in_reward": ["algorithm.name=reinforce_pp"],
    "no_kl": ["algorithm.name=reinforce_pp", "algorithm.kl_coef=0"],
}
LENGTHS = [[3, 7], [5, 1, 4], [6, 2], [2, 8, 3]]  # responses per global group (ragged)


def _groups() -> list:
    from longrl.train.rl import Group

    g = torch.Generator().manual_seed(0)
    groups = []
    for lens in LENGTHS:
        groups.append(
            Group(
                prompt=None,
                example=None,
                responses=[torch.zeros(n, dtype=torch.long) for n in lens],
                old_logp=[-1.0 - torch.rand(n, generator=g) for n in lens],
                finished=[True] * len(lens),
                rewards=torch.rand(len(lens), generator=g),
                ref_logp=[-1.0 - torch.rand(n, generator=g) for n in lens],
            )
        )
    return groups


def _advantages(groups, overrides) -> tuple[list[list[float]], dict]:
    """Each sample's advantages over its response tokens, and the metrics."""
    from longrl.config import load_config
    from longrl.train.rl import step_advantages

    advantages, metrics = step_advantages(groups, load_config(None, overrides))
    return [
        a[i, : len(g.responses[i])].tolist() for g, a in zip(groups, advantages) for i in range(len(g.responses))
    ], metrics


def _worker(rank: int, out_dir: str) -> None:
    from longrl.dist import DistConfig, init_distributed

    env = init_distributed(DistConfig(), "cpu")
    assert env.dp_size == 2
    mine = _groups()[rank::2]
    results = {name: _advantages(mine, overrides) for name, overrides in CASES.items()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def test_reinforce_pp_dp2_whitens_over_the_global_batch(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    groups = _groups()
    for name, overrides in CASES.items():
        expected, metrics = _advantages(groups, overrides)
        sample_groups = [i for i, lens in enumerate(LENGTHS) for _ in lens]
        for r, got in enumerate(ranks):
            want = [a for a, gi in zip(expected, sample_groups) if gi % 2 == r]
            assert _max_diff(got[name][0], want) <= 1e-6, (name, r)
            assert ("actor/kl_in_reward" in metrics) == (name == "kl_in_reward")
            if name == "kl_in_reward":
                assert abs(got[name][1]["actor/kl_in_reward"] - metrics["actor/kl_in_reward"]) <= 1e-7
        # without the all-reduced statistics rank 0's whitening would differ (the check has teeth)
        local, _ = _advantages(groups[0::2], overrides)
        assert _max_diff(local, [a for a, gi in zip(expected, sample_groups) if gi % 2 == 0]) > 1e-2, name
