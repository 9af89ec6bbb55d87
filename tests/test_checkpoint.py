"""Checkpointer: exact round trip, atomic publish, skipping broken checkpoints, pruning, safe loading."""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from _checkpoint_tiny import flat_params, optimizer_and_scheduler, tiny, train_step
from longrl.infra.checkpoint import (
    COMPLETE,
    Checkpointer,
    CheckpointError,
    capture_rng_state,
    restore_rng_state,
)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trip_all_generators():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    state = capture_rng_state()
    expected = draws()
    draws()
    restore_rng_state(state)
    assert draws() == expected
    # weights_only loading is enough for it (no pickled objects)
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restore_rng_state(torch.load(buf, weights_only=True))
    assert draws() == expected


def test_resume_continues_bit_identically(tmp_path):
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    model, tok = tiny()
    opt, sched = optimizer_and_scheduler(model)
    for _ in range(2):
        train_step(model, opt, sched)
    ckpt = Checkpointer(tmp_path, tokenizer=tok)
    path = ckpt.save(2, model=model, optimizer=opt, scheduler=sched, extra={"data_pos": 17, "seen": [1, 2]})
    assert path == tmp_path / "checkpoints" / "step_2" and (path / COMPLETE).is_file()
    losses = [train_step(model, opt, sched) for _ in range(3)]

    other, _ = tiny(seed=123)  # different initial weights, fresh optimizer state
    opt2, sched2 = optimizer_and_scheduler(other)
    random.seed(99), torch.manual_seed(99)  # the RNGs must come from the checkpoint
    extra = Checkpointer(tmp_path).load_latest(model=other, optimizer=opt2, scheduler=sched2)
    assert extra == {"data_pos": 17, "seen": [1, 2], "step": 2}
    assert sched2.last_epoch == 2
    resumed = [train_step(other, opt2, sched2) for _ in range(3)]
    assert resumed == losses
    assert torch.equal(flat_params(other), flat_params(model))


def test_no_checkpoint_returns_none(tmp_path):
    model, _ = tiny()
    opt, sched = optimizer_and_scheduler(model)
    assert Checkpointer(tmp_path).load_latest(model=model, optimizer=opt, scheduler=sched) is None


def _saved_run(tmp_path, steps=(1, 2, 3), keep_last=3):
    model, tok = tiny()
    opt, sched = optimizer_and_scheduler(model)
    ckpt = Checkpointer(tmp_path, keep_last=keep_last, tokenizer=tok)
    params = {}
    for step in range(1, max(steps) + 1):
        train_step(model, opt, sched)
        if step in steps:
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, extra={"at": step})
            params[step] = flat_params(model).clone()
    return ckpt, params


def _load(tmp_path):
    model, _ = tiny(seed=7)
    opt, sched = optimizer_and_scheduler(model)
    extra = Checkpointer(tmp_path).load_latest(model=model, optimizer=opt, scheduler=sched)
    return extra, flat_params(model)


def test_keep_last_prunes_oldest(tmp_path):
    _saved_run(tmp_path, steps=(1, 2, 3, 4), keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_3", "step_4"]


def test_interrupted_write_is_ignored_then_cleaned(tmp_path, caplog):
    ckpt, params = _saved_run(tmp_path, steps=(1, 2))
    # a write killed before publishing leaves a .tmp- dir; one without its marker is a step_N w/o COMPLETE
    shutil.copytree(tmp_path / "checkpoints" / "step_2", tmp_path / "checkpoints" / ".tmp-step_3")
    shutil.copytree(tmp_path / "checkpoints" / "step_2", tmp_path / "checkpoints" / "step_3")
    (tmp_path / "checkpoints" / "step_3" / COMPLETE).unlink()
    with caplog.at_level(logging.WARNING):
        extra, flat = _load(tmp_path)
    assert extra["step"] == 2 and torch.equal(flat, params[2])
    assert "step_3: no COMPLETE marker" in caplog.text
    model, _ = tiny()
    opt, sched = optimizer_and_scheduler(model)
    ckpt.save(4, model=model, optimizer=opt, scheduler=sched, extra={})
    assert not (tmp_path / "checkpoints" / ".tmp-step_3").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_corrupt_checkpoint_falls_back_to_older(tmp_path, caplog, damage):
    _, params = _saved_run(tmp_path, steps=(1, 2))
    data = tmp_path / "checkpoints" / "step_2" / "model" / "__0_0.distcp"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "delete":
        data.unlink()
    else:  # same size, so only loading can tell
        data.write_bytes(os.urandom(data.stat().st_size))
    with caplog.at_level(logging.WARNING):
        extra, flat = _load(tmp_path)
    assert extra == {"at": 1, "step": 1}
    assert torch.equal(flat, params[1])
    assert "skipping checkpoint" in caplog.text and "step_2" in caplog.text


def test_all_checkpoints_broken_is_an_error(tmp_path):
    _saved_run(tmp_path, steps=(1,))
    (tmp_path / "checkpoints" / "step_1" / "trainer_state.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no checkpoint under .* could be loaded.*step_1"):
        _load(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_metadata_pickle_cannot_run_code(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _saved_run(tmp_path, steps=(1, 2))
    (tmp_path / "checkpoints" / "step_2" / "model" / ".metadata").write_bytes(pickle.dumps(_Evil()))
    # keep the manifest consistent so only the unpickler stands in the way
    import json

    marker = tmp_path / "checkpoints" / "step_2" / COMPLETE
    manifest = json.loads(marker.read_text())
    manifest["files"]["model/.metadata"] = (tmp_path / "checkpoints" / "step_2" / "model" / ".metadata").stat().st_size
    marker.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        extra, _ = _load(tmp_path)
    assert extra["step"] == 1
    assert not (tmp_path / "EVIL_RAN").exists()
    assert "not a DCP metadata type" in caplog.text


def test_extra_must_be_loadable_without_pickle(tmp_path):
    model, _ = tiny()
    opt, sched = optimizer_and_scheduler(model)
    with pytest.raises(CheckpointError, match=r"extra\.sampler is a Random"):
        Checkpointer(tmp_path).save(1, model=model, optimizer=opt, scheduler=sched, extra={"sampler": random.Random()})
    # numpy values are converted, not rejected
    Checkpointer(tmp_path).save(
        1, model=model, optimizer=opt, scheduler=sched, extra={"pos": np.int64(5), "perm": np.arange(3)}
    )
    extra = Checkpointer(tmp_path).load_latest(model=model, optimizer=opt, scheduler=sched)
    assert extra["pos"] == 5 and extra["perm"].tolist() == [0, 1, 2]


def test_checkpoint_carries_hf_files(tmp_path):
    _saved_run(tmp_path, steps=(1,))
    hf = tmp_path / "checkpoints" / "step_1" / "hf"
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in hf.iterdir()
    }
    assert "longrl" not in (hf / "config.json").read_text()


def test_checkpoints_past_the_resume_point_are_removed_on_the_next_save(tmp_path):
    _saved_run(tmp_path, steps=(1, 2, 3))
    (tmp_path / "checkpoints" / "step_3" / "trainer_state.pt").write_bytes(b"broken")
    model, _ = tiny(seed=7)
    opt, sched = optimizer_and_scheduler(model)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.load_latest(model=model, optimizer=opt, scheduler=sched)["step"] == 2
    train_step(model, opt, sched)
    ckpt.save(3, model=model, optimizer=opt, scheduler=sched, extra={"timeline": "new"})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_1", "step_2", "step_3"]
    assert Checkpointer(tmp_path).load_latest(model=model, optimizer=opt, scheduler=sched)["timeline"] == "new"
    # a stale step_5 from an abandoned timeline is dropped when step_4 is written
    shutil.copytree(tmp_path / "checkpoints" / "step_3", tmp_path / "checkpoints" / "step_5")
    ckpt.save(4, model=model, optimizer=opt, scheduler=sched, extra={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3", "step_4"]
