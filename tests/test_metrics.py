"""MetricsLogger sinks, resume truncation, console line, PhaseTimer, peak memory; NonFiniteGuard."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from longrl.infra import metrics as metrics_mod
from longrl.infra.guard import NonFiniteError, NonFiniteGuard
from longrl.infra.metrics import MetricsLogger, PhaseTimer, format_console_line, peak_memory_gb, read_metrics


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_jsonl_console_and_tensorboard(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, total_steps=4, log_every=2, config={"rl": {"steps": 4}}, progress=False)
    for step in range(1, 5):
        logger.log(
            step, {"reward/mean": step / 10, "loss": torch.tensor(0.5 * step), "kl": float("nan"), "time/step": 2.0}
        )
    logger.close()
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["reward/mean"] == pytest.approx(0.3) and rows[2]["loss"] == 1.5
    assert math.isnan(rows[0]["kl"])  # NaN is stored as NaN, never as null
    assert '"kl": NaN' in (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert all(math.isnan(r["kl"]) for r in read_metrics(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "step 2/4 | loss 1.0000 | reward 0.200 | kl nan | 2.00 s/step",
        "step 4/4 | loss 2.0000 | reward 0.400 | kl nan | 2.00 s/step",
    ]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]
    assert [e.step for e in events.Scalars("kl")] == [1, 2, 3, 4]  # non-finite values are written too
    assert all(math.isnan(e.value) for e in events.Scalars("kl"))


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, total_steps=6, tensorboard=False, progress=False)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by a SIGKILL mid-write
    logger = MetricsLogger(tmp_path, total_steps=6, tensorboard=False, progress=False, start_step=3)
    logger.log(4, {"loss": 40.0})
    logger.close()
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_console_line_formats_known_metrics():
    line = format_console_line(
        20,
        40,
        {
            "sft/loss": 0.12345,
            "reward/mean": 0.5,
            "accuracy": 0.25,
            "response_length/mean": 87.0,
            "kl": 0.0012,
            "entropy": 1.5,
            "clip_frac": 0.01,
            "grad_norm": 0.8,
            "lr": 1e-4,
            "tokens_per_s": 12345.0,
            "memory/peak_gb": 12.34,
            "unknown": 3.0,
        },
        3.4,
    )
    assert line == (
        "step 20/40 | loss 0.1235 | reward 0.500 | acc 0.250 | len 87.0 | kl 1.20e-03 | ent 1.500 | "
        "clip 0.010 | gnorm 0.800 | lr 1.00e-04 | 12.3k tok/s | 3.40 s/step | mem 12.3 GB"
    )


def test_missing_tensorboard_is_a_one_time_notice(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(metrics_mod, "_TB_NOTICE_SHOWN", False)
    for _ in range(2):
        logger = MetricsLogger(tmp_path, total_steps=1, progress=False)
        logger.log(1, {"loss": 1.0})
        logger.close()
    assert capsys.readouterr().err.count("tensorboard is not installed") == 1
    assert len(_rows(tmp_path)) == 1


def test_phase_timer_accumulates_per_phase(monkeypatch):
    clock = iter([0.0, 1.0, 10.0, 10.5, 20.0, 23.0])
    monkeypatch.setattr(metrics_mod.time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer(sync_cuda=False)
    with timer("rollout"):
        pass
    with timer("update"):
        pass
    with timer("rollout"):
        pass
    assert timer.pop() == {"time/rollout": 4.0, "time/update": 0.5}
    assert timer.pop() == {}


def test_peak_memory_is_zero_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert peak_memory_gb() == 0.0


def test_guard_skips_then_stops(caplog):
    guard = NonFiniteGuard(max_consecutive=3)
    with caplog.at_level(logging.WARNING):
        assert guard.check(torch.tensor(1.0), torch.tensor(2.0), step=1)
        assert not guard.check(torch.tensor(float("nan")), 1.0, step=2)
        assert not guard.check(torch.tensor(1.0), float("inf"), step=3)
        assert guard.check(torch.tensor(1.0), 1.0, step=4)  # a finite step resets the count
        assert not guard.check(torch.tensor(float("inf")), 1.0, step=5)
        assert not guard.check(torch.tensor(float("nan")), 1.0, step=6)
        with pytest.raises(NonFiniteError, match="step 7: loss or gradient was NaN/inf for 3 updates in a row"):
            guard.check(torch.tensor(float("nan")), math.nan, step=7)
    assert "step 2: non-finite loss (nan)" in caplog.text and "step 3:" in caplog.text
    assert guard.skipped == 5
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert (restored.consecutive, restored.skipped) == (3, 5)


def test_console_line_reads_trainer_spellings():
    line = format_console_line(
        3,
        9,
        {
            "actor/loss": 0.5,
            "actor/kl_loss": 0.002,
            "response/length_mean": 12.0,
            "perf/rollout_tok_s": 800.0,
            "perf/peak_mem_gb": 1.5,
        },
        None,
    )
    assert line == "step 3/9 | loss 0.5000 | len 12.0 | kl 2.00e-03 | 800 tok/s | mem 1.5 GB"


def test_nonfinite_values_round_trip_through_metrics_jsonl(tmp_path):
    logger = MetricsLogger(tmp_path, total_steps=2, tensorboard=False, progress=False)
    logger.log(1, {"loss": torch.tensor(float("inf")), "grad_norm": float("-inf"), "kl": float("nan"), "lr": 0.5})
    logger.log(2, {"loss": 1.0, "grad_norm": 2.0, "kl": 0.0, "lr": 0.5})
    logger.close()
    first = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert '"loss": Infinity' in first and '"grad_norm": -Infinity' in first and '"kl": NaN' in first
    rows = read_metrics(tmp_path)
    assert rows[0]["loss"] == math.inf and rows[0]["grad_norm"] == -math.inf and math.isnan(rows[0]["kl"])
    assert (rows[1]["loss"], rows[1]["kl"]) == (1.0, 0.0)
    assert format_console_line(1, 2, rows[0], None) == "step 1/2 | loss inf | kl nan | gnorm -inf | lr 5.00e-01"
