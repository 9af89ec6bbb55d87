"""Adaptive activation checkpointing: the memory budget's arithmetic and the in-forward correction (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

from longrl.train.group_forward import (
    activation_budget,
    kept_layer_bytes,
    plan_checkpointing,
    replan_after_kept_layer,
)

GiB = 2**30
# Qwen2.5-VL-3B's text decoder
TEXT_3B = SimpleNamespace(
    hidden_size=2048, intermediate_size=11008, num_key_value_heads=2, num_attention_heads=16, vocab_size=151936
)


def _budget(**over):
    args = dict(
        driver_free=100 * GiB,
        total=140 * GiB,
        reserved=20 * GiB,
        allocated=12 * GiB,
        inactive_split=3 * GiB,
        missing_grads=6 * GiB,
        tokens=66622,
        response_tokens=1024,
        hidden_size=2048,
        vocab=151936,
    )
    args.update(over)
    return activation_budget(**args)


def test_budget_sets_aside_what_the_update_still_allocates():
    b = _budget()
    # usable: driver free + cached blocks released whole (reserved - allocated - split pieces)
    assert b.usable == 100 * GiB + (20 - 12 - 3) * GiB
    assert b.missing_grads == 6 * GiB
    # the LM head's backward: one [1024, vocab] chunk, six fp32 copies and one bf16
    assert b.head == 1024 * 151936 * 26
    # the final RMSNorm over every packed token: fp32 input + bf16 output
    assert b.final_norm == 66622 * 2048 * 6
    assert b.margin == 2 * GiB + 140 * GiB // 20
    assert b.available == b.usable - b.missing_grads - b.head - b.final_norm - b.margin
    # fewer response tokens than a chunk: the chunk is that small
    assert _budget(response_tokens=100).head == 100 * 151936 * 26


def test_budget_counts_resident_memory_and_split_cache_pieces_as_taken():
    base = _budget()
    # a reference model and AdamW state resident: the driver has that much less free, the budget drops with it
    assert base.available - _budget(driver_free=(100 - 22) * GiB).available == 22 * GiB
    # cached memory stuck in segments that hold live tensors (rollout leftovers) is not usable
    assert base.available - _budget(inactive_split=8 * GiB).available == 5 * GiB
    assert _budget(inactive_split=30 * GiB).usable == 100 * GiB  # never below the driver's free memory
    # gradients already allocated (a second micro-batch) are no longer set aside
    assert _budget(missing_grads=0).available - base.available == 6 * GiB


def test_plan_fits_the_budget_at_512_frames():
    """The F=512 step on one H200 (66,622 packed tokens; policy, reference model and AdamW resident):
    every byte the plan keeps, plus one kept layer for backward, lies inside the budget."""
    tokens = 66622
    kept = kept_layer_bytes(TEXT_3B, tokens, 2)
    ckpt = tokens * 2048 * 2
    assert 6.2 * GiB < kept < 6.3 * GiB  # an estimate: the H200 step measured 8.33 GiB, and group_hidden re-plans
    b = _budget(driver_free=110 * GiB, reserved=2 * GiB, allocated=27 * GiB, inactive_split=0)
    flags = plan_checkpointing([True] * 36, kept, ckpt, b.available)
    keep = flags.count(False)
    assert flags == [True] * (36 - keep) + [False] * keep  # the first layers recompute, the last keep
    assert 0 < keep < 36
    assert keep * kept + (36 - keep) * ckpt + kept <= b.available
    assert (keep + 1) * kept + (35 - keep) * ckpt + kept > b.available  # and one more kept layer would not fit


def test_replan_checkpoints_more_when_a_kept_layer_keeps_more_than_estimated():
    flagged = [True] * 10
    flags = plan_checkpointing(flagged, 10, 1, 10 + 10 * 5 + 5)  # 5 kept
    assert flags == [True] * 5 + [False] * 5
    # layer 5 (the first kept) kept 20 bytes, not 10; 60 bytes are left for layers 6..9 and backward's room
    new = replan_after_kept_layer(flags, flagged, 5, measured=20, estimate=10, checkpointed=1, room=60)
    assert new[:6] == flags[:6]  # what already ran keeps its choice
    later_kept = new[6:].count(False)
    assert later_kept * 20 + new[6:].count(True) * 1 + 20 <= 60
    assert new == [True] * 5 + [False] + [True] * 3 + [False]  # room 60 - 4 - 20 = 36: one kept (19 more each)
    # as estimated, or smaller: nothing changes; the last layer: nothing left to change
    assert replan_after_kept_layer(flags, flagged, 5, measured=10, estimate=10, checkpointed=1, room=0) == flags
    assert replan_after_kept_layer(flags, flagged, 9, measured=99, estimate=10, checkpointed=1, room=0) == flags
    # no room at all: every later layer recomputes
    assert replan_after_kept_layer(flags, flagged, 5, measured=20, estimate=10, checkpointed=1, room=0) == (
        flags[:6] + [True] * 4
    )
