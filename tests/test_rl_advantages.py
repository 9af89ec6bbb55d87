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
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0
    )


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
    close(
        compute_advantages(AlgorithmConfig(advantage="grpo", norm_adv_by_std=False), RAGGED),
        [2 / 3, -1 / 3, -1 / 3, -1.0, 1.0, 0.0],
    )
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
    # without a response mask every sample counts once (the token-level result for equal lengths)
    close(
        compute_advantages(AlgorithmConfig(advantage="reinforce_pp"), torch.tensor([[1.0, 3.0], [5.0, 7.0]])),
        [-3 / math.sqrt(5), -1 / math.sqrt(5), 1 / math.sqrt(5), 3 / math.sqrt(5)],
    )


def ragged_batch(seed=0):
    """Two groups of 3 with response lengths 1..7 (very unequal, so length weighting shows)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 7, 3, 6, 2, 5])
    mask = torch.arange(7) < lengths[:, None]
    token_kl = torch.rand(6, 7, generator=g) - 0.3  # k1 KL can be negative
    rewards = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])]
    return rewards, mask, token_kl


def verl_reinforce_pp(token_level_rewards, response_mask, unbiased=True):
    """verl's REINFORCE++ (compute_reinforce_plus_plus_outcome_advantage with gamma = 1, then
    verl_F.masked_whiten) written out from its definition: the return-to-go restarts after each
    response's end, and mean and variance are over the masked tokens, var with Bessel's
    correction, scaled by rsqrt(var + 1e-8)."""
    m = response_mask.double()
    returns = torch.zeros_like(token_level_rewards, dtype=torch.float64)
    running = torch.zeros(token_level_rewards.shape[0], dtype=torch.float64)
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t].double() + running
        returns[:, t] = running
        running = running * m[:, t]
    n = m.sum()
    mean = (returns * m).sum() / n
    var = ((returns - mean) ** 2 * m).sum() / n
    if unbiased:
        var = var * n / (n - 1)
    return (returns - mean) * torch.rsqrt(var + 1e-8) * m, int(n)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_reinforce_pp_matches_verl(kl_coef):
    rewards, mask, token_kl = ragged_batch()
    flat = torch.cat(rewards)
    # verl's token rewards: the score on the last response token, minus beta * KL on every token
    lengths = mask.sum(-1)
    scores = torch.zeros(6, 7)
    scores[torch.arange(6), lengths - 1] = flat
    verl, n = verl_reinforce_pp(scores - kl_coef * token_kl * mask, mask)
    cfg = AlgorithmConfig(advantage="reinforce_pp", kl_coef=kl_coef, kl_in_reward=True, kl_estimator="k1")
    ours = compute_advantages(cfg, rewards, token_kl=token_kl, mask=mask)
    assert ours.shape == (6, 7)
    # the one difference: population std (OpenRLHF) where verl applies Bessel's correction
    close(ours * math.sqrt((n - 1) / n), verl, atol=1e-5)
    close(ours, verl_reinforce_pp(scores - kl_coef * token_kl * mask, mask, unbiased=False)[0], atol=1e-5)


def test_reinforce_pp_is_continuous_as_kl_goes_to_zero():
    rewards, mask, token_kl = ragged_batch()
    config = dict(advantage="reinforce_pp", kl_estimator="k1")
    tiny = compute_advantages(
        AlgorithmConfig(**config, kl_coef=1e-8, kl_in_reward=True), rewards, token_kl=token_kl, mask=mask
    )
    zero = compute_advantages(AlgorithmConfig(**config, kl_coef=0.0, kl_in_reward=True), rewards, mask=mask)
    kl_as_loss = compute_advantages(AlgorithmConfig(**config, kl_coef=0.01, kl_in_reward=False), rewards, mask=mask)
    # the same kind of whitening in all three: per token over the batch's response tokens
    assert tiny.shape == zero.shape == kl_as_loss.shape == (6, 7)
    close(tiny, zero, atol=1e-6)
    close(kl_as_loss, zero, atol=0)
    # without KL each token carries its sample's reward: a length-weighted batch mean and std
    flat = torch.cat(rewards)
    lengths = mask.sum(-1).float()
    mean = (flat * lengths).sum() / lengths.sum()
    std = ((((flat - mean) ** 2) * lengths).sum() / lengths.sum()).sqrt()
    close(zero, ((flat - mean) / (std + 1e-6))[:, None] * mask)
    # per-sequence whitening (what kl_coef = 0 gave before) is far from it on this batch
    per_sequence = (flat - flat.mean()) / (flat.std(unbiased=False) + 1e-6)
    assert (zero[:, 0] - per_sequence).abs().max() > 0.1


def test_trainer_reinforce_pp_advantages_are_continuous_as_kl_goes_to_zero():
    from types import SimpleNamespace

    from longrl.train.rl import step_advantages

    rewards, mask, token_kl = ragged_batch()
    lengths = mask.sum(-1).tolist()
    g = torch.Generator().manual_seed(1)
    old_logp = [-torch.rand(n, generator=g) for n in lengths]
    ref_logp = [lp - torch.rand(n, generator=g) for lp, n in zip(old_logp, lengths)]
    groups = [
        SimpleNamespace(
            rewards=r,
            responses=[torch.zeros(n) for n in lengths[3 * i : 3 * i + 3]],
            old_logp=old_logp[3 * i : 3 * i + 3],
            ref_logp=ref_logp[3 * i : 3 * i + 3],
        )
        for i, r in enumerate(rewards)
    ]

    def advantages(**algo):
        cfg = SimpleNamespace(algorithm=AlgorithmConfig(advantage="reinforce_pp", kl_estimator="k1", **algo))
        per_group, _ = step_advantages(groups, cfg)
        return torch.cat(per_group)

    zero = advantages(kl_coef=0.0)  # no reference model at all
    assert zero.shape == (6, 7)
    close(advantages(kl_coef=1e-8, kl_in_reward=True), zero, atol=1e-6)
    close(zero, compute_advantages(AlgorithmConfig(advantage="reinforce_pp"), rewards, mask=mask), atol=0)


def test_bad_reward_shape_is_named():
    with pytest.raises(ValueError, match="num_groups, n"):
        grpo_advantages(torch.zeros(4))
