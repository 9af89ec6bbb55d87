import logging

import pytest
import torch

from longrl.rl import AlgorithmConfig, BatchFiller, keep_informative_groups, overlong_penalty


def test_keep_informative_groups_dense_and_ragged():
    dense = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert keep_informative_groups(dense).tolist() == [False, True, False]
    ragged = [torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.9, 0.2, 0.2]), torch.tensor([1.0])]
    assert keep_informative_groups(ragged).tolist() == [False, True, False]


def test_batch_filler_fills_exactly_the_target(caplog):
    filler = BatchFiller(target_groups=3, max_tries=5)
    filler.add(["a", "b"], rewards=torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # keeps b
    assert not filler.done and filler.tries == 1 and filler.groups == ["b"]
    filler.add(["c", "d", "e"], rewards=[torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.3, 0.1])])
    filler.add(["f"])  # pre-filtered by the caller
    assert filler.done and filler.tries == 3
    with caplog.at_level(logging.INFO, logger="longrl.rl"):
        batch = filler.take()
    assert batch == ["b", "c", "e"]  # exactly the target; the surplus "f" is dropped
    assert "3/3 informative groups after 3 tries (6 generated, 2 dropped" in caplog.text
    assert filler.tries == 0 and filler.groups == [] and not filler.done  # reset for the next step


def test_batch_filler_stops_at_max_tries(caplog):
    filler = BatchFiller(target_groups=4, max_tries=2)
    with pytest.raises(RuntimeError, match="before done"):
        filler.take()
    filler.add(["a", "b"], rewards=torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    filler.add(["c", "d"], rewards=torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert filler.done
    with caplog.at_level(logging.WARNING, logger="longrl.rl"):
        batch = filler.take()
    assert batch == ["a", "d"]
    assert "2/4 informative groups after 2 tries" in caplog.text


def test_batch_filler_rejects_mismatched_rewards():
    with pytest.raises(ValueError, match="2 groups but rewards for 1"):
        BatchFiller(2, 2).add(["a", "b"], rewards=torch.tensor([[1.0, 0.0]]))


def test_overlong_penalty():
    lengths = [50, 80, 90, 100, 120]
    torch.testing.assert_close(
        overlong_penalty(lengths, max_len=100, buffer=20, penalty=1.0), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    )
    torch.testing.assert_close(
        overlong_penalty(torch.tensor(lengths), max_len=100, buffer=20, penalty=0.5),
        torch.tensor([0.0, 0.0, 0.25, 0.5, 0.5]),
    )
    torch.testing.assert_close(overlong_penalty(lengths, max_len=100, buffer=0), torch.zeros(5))
    with pytest.raises(ValueError, match="overlong_buffer=4096"):
        overlong_penalty(lengths, max_len=128, buffer=4096)


def test_filter_rule_as_documented(caplog):
    # The README's rule: dropped when max - min <= 1e-6, or a group of one; max_tries rounds
    # (default 3, the first included); nothing informative -> an empty batch, with a warning.
    rewards = [torch.tensor([0.5, 0.5 + 5e-7]), torch.tensor([0.5, 0.5 + 1e-5]), torch.tensor([0.0])]
    assert keep_informative_groups(rewards).tolist() == [False, True, False]
    assert AlgorithmConfig().max_tries == 3
    filler = BatchFiller(target_groups=2, max_tries=3)
    for _ in range(3):
        assert not filler.done
        filler.add(["x", "y"], rewards=torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert filler.done and filler.tries == 3
    with caplog.at_level(logging.WARNING, logger="longrl.rl"):
        assert filler.take() == []
    assert (
        "0/2 informative groups after 3 tries (6 generated, 6 dropped as all-equal); training on a smaller batch"
        in caplog.text
    )
