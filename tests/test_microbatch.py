"""Token-budget micro-batching, and gradient accumulation that equals the unsplit mini-batch."""

from __future__ import annotations

import pytest
import torch

from longrl.rl.config import AlgorithmConfig
from longrl.rl.losses import policy_loss
from longrl.train.logprobs import group_logprobs
from longrl.train.microbatch import accumulation_normalizer, pad_ragged, split_by_token_budget, split_group
from test_group_forward import grads, tiny_video_group


def test_split_by_token_budget_first_fit_decreasing():
    sizes = [5, 9, 2, 7, 4, 12]
    batches = split_by_token_budget(list("abcdef"), sizes, budget=10)
    # 12 alone (over budget), 9 then room 1: alone; 7 + 2; 5 + 4
    assert batches == [[0, 4], [1], [2, 3], [5]]
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(sum(sizes[i] for i in b) <= 10 for b in batches if len(b) > 1)
    assert split_by_token_budget([1, 2, 3], [1, 2, 3], budget=100) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="sizes"):
        split_by_token_budget([1, 2], [1], budget=4)


def test_split_group_keeps_prefix_plus_responses_under_budget():
    subgroups = split_group(prefix_len=100, response_lens=[30, 50, 10, 40], budget=160)
    # room 60 after the prefix: 50 then 10 share; 40 and 30 each alone
    assert subgroups == [[0], [1, 2], [3]]
    assert split_group(prefix_len=500, response_lens=[3, 4], budget=160) == [[0], [1]]


def test_pad_ragged():
    padded, mask = pad_ragged([torch.tensor([1.0, 2.0]), torch.tensor([3.0]), torch.tensor([4.0, 5.0, 6.0])], -1)
    assert padded.tolist() == [[1, 2, -1], [3, -1, -1], [4, 5, 6]]
    assert mask.tolist() == [[True, True, False], [True, False, False], [True, True, True]]


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_accumulated_microbatches_equal_the_whole_minibatch(loss_agg):
    """Two groups (video prompts) in one mini-batch; micro-batches of at most ``budget`` packed tokens
    (groups split into sub-groups) accumulate to the loss and gradients of one unsplit backward."""
    model, prompt_a, responses_a = tiny_video_group(seed=0)
    _, prompt_b, responses_b = tiny_video_group(seed=5)  # same weights (seed 0 model), other video/responses
    prompt_b.video_embeds = prompt_b.video_embeds * 0.5
    model.model.visual.requires_grad_(False)
    groups = [(prompt_a, responses_a), (prompt_b, responses_b)]
    cfg = AlgorithmConfig(loss_agg=loss_agg)
    g = torch.Generator().manual_seed(0)
    advantages = [torch.randn(len(rs), generator=g) for _, rs in groups]
    with torch.no_grad():
        old = [
            [lp + 0.3 * torch.randn(lp.shape, generator=g) for lp in group_logprobs(model, p, rs).logprobs]
            for p, rs in groups
        ]  # off-policy enough that some ratios clip

    def loss_of(items, normalizer=None):  # items: (group, response) index pairs
        logps = []
        for gi in sorted({gi for gi, _ in items}):
            prompt, responses = groups[gi]
            picked = [ri for gj, ri in items if gj == gi]
            logps += group_logprobs(model, prompt, [responses[ri] for ri in picked]).logprobs
        logp, mask = pad_ragged(logps)
        old_logp, _ = pad_ragged([old[gi][ri] for gi, ri in items])
        adv = torch.stack([advantages[gi][ri] for gi, ri in items])
        return policy_loss(logp, old_logp, adv, mask, cfg, normalizer=normalizer)[0]

    everything = [(gi, ri) for gi, (_, rs) in enumerate(groups) for ri in range(len(rs))]
    whole = loss_of(everything)
    whole.backward()
    whole_grads = grads(model)

    lens = [groups[gi][1][ri].numel() for gi, ri in everything]
    normalizer = accumulation_normalizer(loss_agg, lens)
    budget = len(prompt_a) + 14
    micro = []
    for gi, (prompt, responses) in enumerate(groups):  # split each group, then pack across groups
        micro += [[(gi, ri) for ri in sub] for sub in split_group(len(prompt), [r.numel() for r in responses], budget)]
    assert len(micro) > 2  # the budget really splits the groups
    total = 0.0
    for items in micro:
        loss = loss_of(items, normalizer)
        loss.backward()
        total += loss.item()
    accumulated = grads(model)

    assert abs(total - whole.item()) <= 1e-5
    assert accumulated.keys() == whole_grads.keys()
    assert max((accumulated[k] - whole_grads[k]).abs().max().item() for k in accumulated) <= 1e-5
