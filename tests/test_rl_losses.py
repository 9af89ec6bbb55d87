import math

import pytest
import torch

from longrl.rl import AlgorithmConfig, aggregate, entropy_from_logits, importance_log_ratio, kl_penalty, policy_loss


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0
    )


def inputs_with_ratios(ratios, mask, pad_logp=float("nan")):
    """logp (leaf, requires grad) and old_logp with exp(logp - old_logp) = ratios on valid tokens.
    Padding holds NaN in logp: it must never reach the loss or its gradient."""
    old = torch.full(mask.shape, -1.0)
    logp = (old + torch.tensor(ratios).log()).where(mask.bool(), torch.tensor(pad_logp))
    return logp.requires_grad_(), old


MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # ragged: 2 and 1 response tokens
RATIOS = [[1.5, 0.7, 1.0], [1.1, 1.0, 1.0]]
ADV = torch.tensor([1.0, -2.0])
# per-token losses with clip 0.2/0.2: r=1.5, A=1 -> -1.2 (clipped high); r=0.7, A=1 -> -0.7;
# r=1.1, A=-2 -> 2.2 (inside the range)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token_mean", (-1.2 - 0.7 + 2.2) / 3),
        ("seq_mean_token_mean", (-0.95 + 2.2) / 2),
        ("seq_mean_token_sum", (-1.9 + 2.2) / 2),
    ],
)
def test_ppo_clip_aggregations_on_ragged_rows(mode, expected):
    logp, old = inputs_with_ratios(RATIOS, MASK)
    loss, metrics = policy_loss(logp, old, ADV, MASK, AlgorithmConfig(loss_agg=mode))
    close(loss, expected)
    assert metrics["clip_frac_high"] == pytest.approx(1 / 3)
    assert metrics["clip_frac_low"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.7 + 1.1) / 3, abs=1e-5)
    loss.backward()
    # d/dlogp of -A*r is -A*r where not clipped; 0 on the clipped token and on padding
    weights = {
        "token_mean": (1 / 3, 1 / 3),
        "seq_mean_token_mean": (1 / 4, 1 / 2),
        "seq_mean_token_sum": (1 / 2, 1 / 2),
    }[mode]
    close(logp.grad, [[0.0, -0.7 * weights[0], 0.0], [2.2 * weights[1], 0.0, 0.0]])


def test_dr_grpo_constant_token_sum_divisor():
    logp, old = inputs_with_ratios(RATIOS, MASK)
    cfg = AlgorithmConfig(loss_agg="seq_mean_token_sum", token_sum_divisor=4.0)
    close(policy_loss(logp, old, ADV, MASK, cfg)[0], (-1.9 / 4 + 2.2 / 4) / 2)
    with pytest.raises(ValueError, match="resolve"):
        policy_loss(logp, old, ADV, MASK, AlgorithmConfig(loss_agg="seq_mean_token_sum", token_sum_divisor=-1))
    assert AlgorithmConfig(token_sum_divisor=-1).resolve(max_response_len=256).token_sum_divisor == 256.0


def test_clip_higher():
    mask = torch.tensor([[1]])
    for high, expected_loss, expected_grad in [(0.2, -1.2, 0.0), (0.28, -1.25, -1.25)]:
        logp, old = inputs_with_ratios([[1.25]], mask)
        loss, metrics = policy_loss(logp, old, torch.tensor([1.0]), mask, AlgorithmConfig(clip_ratio_high=high))
        loss.backward()
        close(loss, expected_loss)
        close(logp.grad, [[expected_grad]])
        assert metrics["clip_frac_high"] == (1.0 if high == 0.2 else 0.0)


def test_clip_low_for_negative_advantage():
    mask = torch.tensor([[1]])
    logp, old = inputs_with_ratios([[0.7]], mask)
    loss, metrics = policy_loss(logp, old, torch.tensor([-1.0]), mask, AlgorithmConfig())
    loss.backward()
    close(loss, 0.8)  # max(0.7, 0.8): the clipped term, no gradient
    close(logp.grad, [[0.0]])
    assert metrics["clip_frac_low"] == 1.0 and metrics["clip_frac_high"] == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    mask = torch.tensor([[1, 1]])
    ratios = [[5.0, 2.0]]
    adv = torch.tensor([[-1.0, -1.0]])  # token-level advantages
    logp, old = inputs_with_ratios(ratios, mask)
    loss, metrics = policy_loss(logp, old, adv, mask, AlgorithmConfig())
    loss.backward()
    close(loss, (5.0 + 2.0) / 2)  # no dual clip: the huge ratio drives the loss and gradient
    close(logp.grad, [[2.5, 1.0]])
    logp, old = inputs_with_ratios(ratios, mask)
    loss, metrics = policy_loss(logp, old, adv, mask, AlgorithmConfig(dual_clip_c=3.0))
    loss.backward()
    close(loss, (3.0 + 2.0) / 2)  # min(5, 3) = 3, constant; the r=2 token is below c
    close(logp.grad, [[0.0, 1.0]])
    assert metrics["dual_clip_frac"] == 0.5
    # positive advantages are never dual-clipped: r=5, A=1 -> max(-5, -1.2) = -1.2 (not min(-1.2, -3))
    logp, old = inputs_with_ratios([[5.0]], torch.tensor([[1]]))
    close(policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1]]), AlgorithmConfig(dual_clip_c=3.0))[0], -1.2)


def test_gspo_sequence_ratio_value_and_gradient():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    diffs = torch.tensor([[0.1, 0.3, 0.0], [-0.1, 0.0, 0.0]])
    logp = (old + diffs).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    s0, s1 = math.exp(0.2), math.exp(-0.1)  # exp(mean token log-ratio) per sequence
    cfg = AlgorithmConfig(
        importance="sequence", loss_agg="seq_mean_token_mean", clip_ratio_low=0.5, clip_ratio_high=0.5
    )
    loss, metrics = policy_loss(logp, old, adv, mask, cfg)
    close(loss, (-s0 + s1) / 2)
    assert metrics["ratio_mean"] == pytest.approx((2 * s0 + s1) / 3, abs=1e-5)
    loss.backward()
    # GSPO: L = 1/2 * sum_i -A_i * s_i, d s_i / d logp_t = s_i / |y_i|
    close(logp.grad, [[-s0 / 4, -s0 / 4, 0.0], [s1 / 2, 0.0, 0.0]])

    # its own clip range (3e-4 / 4e-4) clips both sequences: constant loss, no gradient
    logp.grad = None
    gspo = AlgorithmConfig(
        importance="sequence", loss_agg="seq_mean_token_mean", clip_ratio_low=3e-4, clip_ratio_high=4e-4
    )
    loss, metrics = policy_loss(logp, old, adv, mask, gspo)
    loss.backward()
    close(loss, (-(1 + 4e-4) + (1 - 3e-4)) / 2)
    close(logp.grad, torch.zeros(2, 3))
    assert metrics["clip_frac_high"] == pytest.approx(2 / 3) and metrics["clip_frac_low"] == pytest.approx(1 / 3)


def test_gspo_token_ratio_is_the_sequence_ratio_to_float32_rounding():
    # Improbable tokens (|logp| 40..80): sg[log s] + logp - sg[logp] rounded log s to a float32
    # step of |logp| (errors ~2e-6); logp - sg[logp] + sg[log s] keeps it to the last bit.
    torch.manual_seed(0)
    B, T = 4, 64
    mask = torch.ones(B, T, dtype=torch.long)
    old = -40 - 40 * torch.rand(B, T)
    logp = (old + 0.01 * torch.randn(B, T)).requires_grad_()
    log_s = (logp.detach().double() - old.double()).mean(-1, keepdim=True)  # exact, in float64
    cfg = AlgorithmConfig(importance="sequence", loss_agg="seq_mean_token_mean")
    ratio = importance_log_ratio(logp, old, mask, "sequence").exp()
    err = (ratio.detach().double() - log_s.exp()).abs().max().item()
    assert err <= 2 * torch.finfo(torch.float32).eps, err
    _, metrics = policy_loss(logp, old, torch.ones(B), mask, cfg)
    assert metrics["ratio_mean"] == pytest.approx(log_s.exp().mean().item(), abs=2e-7)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_micro_batches_with_normalizer_sum_to_full_batch(mode, importance):
    torch.manual_seed(0)
    B, T = 6, 7
    lengths = torch.tensor([7, 1, 4, 3, 6, 2])
    mask = (torch.arange(T) < lengths[:, None]).long()
    logp0 = -torch.rand(B, T) * 3
    old = logp0 + 0.3 * torch.randn(B, T)
    ref = logp0 + 0.3 * torch.randn(B, T)
    entropy = torch.rand(B, T)
    adv = torch.randn(B)
    cfg = AlgorithmConfig(
        loss_agg=mode,
        importance=importance,
        kl_coef=0.1,
        entropy_coef=0.01,
        dual_clip_c=3.0,
        clip_ratio_high=0.28,
        token_sum_divisor=8.0 if mode == "seq_mean_token_sum" else 0.0,
    )

    full_logp = logp0.clone().requires_grad_()
    full_loss, _ = policy_loss(full_logp, old, adv, mask, cfg, ref_logp=ref, entropy=entropy)
    full_loss.backward()

    normalizer = float(mask.sum()) if mode == "token_mean" else float(B)
    micro_logp = logp0.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        loss, _ = policy_loss(
            micro_logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            cfg,
            normalizer=normalizer,
            ref_logp=ref[rows],
            entropy=entropy[rows],
        )
        loss.backward()  # gradients accumulate in micro_logp.grad
        total += loss.item()
    assert total == pytest.approx(full_loss.item(), abs=1e-6)
    close(micro_logp.grad, full_logp.grad, atol=1e-6)


def test_kl_estimators():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-0.5, -0.5])
    close(kl_penalty(logp, ref, "k1"), [0.5, -0.5])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.125])
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) + 0.5 - 1, math.exp(0.5) - 0.5 - 1])
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_kl_and_entropy_terms_in_policy_loss():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logp = torch.tensor([[0.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-0.5, -0.5, 7.0], [-1.0, 7.0, 7.0]])
    zero_adv = torch.zeros(2)
    cfg = AlgorithmConfig(kl_coef=0.1, kl_estimator="k1")
    loss, metrics = policy_loss(logp, logp, zero_adv, mask, cfg, ref_logp=ref)
    close(loss, 0.1 * (0.5 - 0.5 - 1.0) / 3)
    assert metrics["kl_loss"] == pytest.approx(-1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, zero_adv, mask, cfg)
    # KL folded into the reward: no loss term, no reference needed here
    loss, _ = policy_loss(logp, logp, zero_adv, mask, AlgorithmConfig(kl_coef=0.1, kl_in_reward=True))
    close(loss, 0.0)
    entropy = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]])
    loss, metrics = policy_loss(logp, logp, zero_adv, mask, AlgorithmConfig(entropy_coef=0.01), entropy=entropy)
    close(loss, -0.01 * 2.0)
    assert metrics["entropy"] == pytest.approx(2.0)


def test_approx_kl_metric():
    mask = torch.tensor([[1, 1]])
    logp, old = inputs_with_ratios([[2.0, 0.5]], mask)
    _, metrics = policy_loss(logp, old, torch.tensor([0.0]), mask, AlgorithmConfig())
    expected = ((2.0 - 1 - math.log(2.0)) + (0.5 - 1 - math.log(0.5))) / 2
    assert metrics["approx_kl"] == pytest.approx(expected, abs=1e-6)


def test_aggregate_counts_only_rows_with_tokens():
    values = torch.tensor([[1.0, 3.0], [5.0, 5.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    close(aggregate(values, mask, "token_mean"), 3.0)
    close(aggregate(values, mask, "seq_mean_token_mean"), (2.0 + 5.0) / 2)
    close(aggregate(values, mask, "seq_mean_token_sum"), (4.0 + 5.0) / 2)
    close(aggregate(values, mask, "seq_mean_token_sum", normalizer=3.0), 3.0)
    close(aggregate(values, torch.zeros_like(mask), "token_mean"), 0.0)


def test_entropy_from_logits_chunked_matches_full():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    close(entropy_from_logits(probs.log()), [0.5 * math.log(2) + 0.5 * math.log(4), math.log(3)])
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.bfloat16)
    full = logits.float().clone().requires_grad_()
    chunked = logits.float().clone().requires_grad_()
    e_full = entropy_from_logits(full, chunk_size=10_000)
    e_chunked = entropy_from_logits(chunked, chunk_size=4)
    assert e_chunked.shape == (3, 5) and e_chunked.dtype == torch.float32
    close(e_chunked, e_full)
    (e_full * torch.arange(15.0).view(3, 5)).sum().backward()
    (e_chunked * torch.arange(15.0).view(3, 5)).sum().backward()
    close(chunked.grad, full.grad)
