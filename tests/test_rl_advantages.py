import math

import pytest
import torch

from longrl.rl import (
    AlgorithmConfig,
    compute_advantages,
    drgrpo_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)

RAGGED = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 4.0]), torch.tensor([5.0])]


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def test_grpo_dense_group():
    # mean 0.5, unbiased std sqrt(1/3)
    adv = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    a = 0.5 / math.sqrt(1 / 3)
    assert adv.shape == (1, 4)
    close(adv, [[a, -a, -a, a]])


def test_grpo_ragged_groups():
    adv = grpo_advantages(RAGGED)
    assert [g.numel() for g in adv] == [3, 2, 1]
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0]
    close(adv[0], [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s])
    close(adv[1], [-1 / math.sqrt(2), 1 / math.sqrt(2)])  # std of [2, 4] = sqrt(2)
    close(adv[2], [0.0])  # a group of one has no baseline to beat


def test_grpo_all_equal_group_is_zero_not_nan():
    close(grpo_advantages(torch.tensor([[0.7, 0.7, 0.7]])), [[0.0, 0.0, 0.0]])


def test_drgrpo_and_grpo_without_std():
    expected = [[2 / 3, -1 / 3, -1 / 3], [-1.0, 1.0], [0.0]]
    for adv in (drgrpo_advantages(RAGGED), grpo_advantages(RAGGED, norm_by_std=False)):
        for got, want in zip(adv, expected):
            close(got, want)


def test_rloo_leave_one_out():
    adv = rloo_advantages(RAGGED)
    close(adv[0], [1.0, -0.5, -0.5])  # 1 - mean(0, 0); 0 - mean(1, 0)
    close(adv[1], [-2.0, 2.0])
    close(adv[2], [0.0])
    close(rloo_advantages(torch.tensor([[3.0, 1.0, 2.0]])), [[1.5, -1.5, 0.0]])


def test_reinforce_pp_batch_whitening():
    adv = reinforce_pp_advantages(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
    s = math.sqrt(5.0)  # population std of [1, 3, 5, 7] around 4
    close(adv, [[-3 / s, -1 / s], [1 / s, 3 / s]])
    baseline = reinforce_pp_advantages(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), subtract_group_mean=True)
    close(baseline, [[-1.0, 1.0], [-1.0, 1.0]], atol=1e-4)  # centred [-1, 1, -1, 1], std 1


def test_reinforce_pp_token_level_kl_return_to_go():
    rewards = [torch.tensor([1.0, 0.0])]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    token_kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.0, 0.5]])  # 9.0 sits on padding: ignored
    # token rewards (kl_coef 0.5): row 0 [-0.05, -0.1 + 1], row 1 [-0.15, 0, -0.25]
    returns = [0.85, 0.9, -0.4, -0.25, -0.25]
    mean = sum(returns) / 5
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / 5)
    w = [(r - mean) / std for r in returns]
    adv = reinforce_pp_advantages(rewards, token_kl=token_kl, mask=mask, kl_coef=0.5)
    close(adv, [[w[0], w[1], 0.0], [w[2], w[3], w[4]]])
    centred = reinforce_pp_advantages(rewards, token_kl=token_kl, mask=mask, kl_coef=0.5, norm_by_std=False)
    close(centred, [[0.85 - mean, 0.9 - mean, 0.0], [-0.4 - mean, -0.25 - mean, -0.25 - mean]])


def test_compute_advantages_dispatch_is_flat():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    close(compute_advantages(AlgorithmConfig(), rewards), [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0, 0.0], atol=1e-4)
    close(compute_advantages(AlgorithmConfig(advantage="drgrpo"), rewards), [0.5, -0.5, 0.0, 0.0])
    close(compute_advantages(AlgorithmConfig(advantage="rloo"), RAGGED), [1.0, -0.5, -0.5, -2.0, 2.0, 0.0])
    close(compute_advantages(AlgorithmConfig(advantage="grpo", norm_adv_by_std=False), RAGGED),
          [2 / 3, -1 / 3, -1 / 3, -1.0, 1.0, 0.0])
    assert compute_advantages(AlgorithmConfig(), []).numel() == 0


def test_compute_advantages_sequence_kl_in_reward():
    # RLOO-style: each reward loses kl_coef * sum of its response-token KL.
    cfg = AlgorithmConfig(advantage="rloo", kl_coef=0.5, kl_in_reward=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    token_kl = torch.tensor([[0.4, 0.6, 100.0], [0.2, 100.0, 100.0]])
    # rewards [1, 1] -> [1 - 0.5, 1 - 0.1] = [0.5, 0.9]
    close(compute_advantages(cfg, [torch.tensor([1.0, 1.0])], token_kl=token_kl, mask=mask), [-0.4, 0.4])
    with pytest.raises(ValueError, match="token_kl"):
        compute_advantages(cfg, [torch.tensor([1.0, 1.0])])


def test_compute_advantages_reinforce_pp_token_level():
    cfg = AlgorithmConfig(advantage="reinforce_pp", kl_coef=0.5, kl_in_reward=True, kl_estimator="k1")
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    token_kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.0, 0.5]])
    adv = compute_advantages(cfg, torch.tensor([[1.0, 0.0]]), token_kl=token_kl, mask=mask)
    assert adv.shape == (2, 3)
    close(adv, reinforce_pp_advantages([torch.tensor([1.0, 0.0])], token_kl=token_kl, mask=mask, kl_coef=0.5))
    # without KL in the reward it is sequence-level
    close(compute_advantages(AlgorithmConfig(advantage="reinforce_pp"), torch.tensor([[1.0, 3.0], [5.0, 7.0]])),
          [-3 / math.sqrt(5), -1 / math.sqrt(5), 1 / math.sqrt(5), 3 / math.sqrt(5)])


def test_bad_reward_shape_is_named():
    with pytest.raises(ValueError, match="num_groups, n"):
        grpo_advantages(torch.zeros(4))
