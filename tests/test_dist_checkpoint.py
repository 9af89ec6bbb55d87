"""A DCP checkpoint written by 2 FSDP2 ranks loads at 4 ranks (gloo, CPU): same full weights and
optimizer moments, and the run's ``extra`` comes back. (2 -> 1 is in test_dist_torchrun.)"""

from __future__ import annotations

import os

import torch

from _checkpoint_tiny import optimizer_and_scheduler, tiny, train_step
from _dist import spawn


def _full_state(model, optimizer) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    out = {f"model/{k}": v for k, v in get_model_state_dict(model, options=options).items()}
    # full_state_dict with cpu_offload: rank 0 receives the whole state, the other ranks nothing
    for name, state in get_optimizer_state_dict(model, optimizer, options=options).get("state", {}).items():
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"optim/{name}/{key}"] = state[key]
    return out


def _sharded(world_dp: int):
    from longrl.dist import DistConfig, init_distributed, parallelize

    env = init_distributed(DistConfig(), "cpu")
    assert env.dp_size == world_dp
    model, _ = tiny()
    parallelize(model, env.mesh, env.config)
    return model


def _save(rank: int, run_dir: str) -> None:
    from safetensors.torch import save_file

    from longrl.infra.checkpoint import Checkpointer

    model = _sharded(2)
    optimizer, scheduler = optimizer_and_scheduler(model)
    torch.manual_seed(5)
    train_step(model, optimizer, scheduler)
    train_step(model, optimizer, scheduler)
    Checkpointer(run_dir).save(
        2, model=model, optimizer=optimizer, scheduler=scheduler, extra={"sampler": {"cursor": 7}}
    )
    full = _full_state(model, optimizer)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, os.path.join(run_dir, "saved.safetensors"))


def _load(rank: int, run_dir: str) -> None:
    from safetensors.torch import load_file

    from longrl.infra.checkpoint import Checkpointer

    model = _sharded(4)
    optimizer, scheduler = optimizer_and_scheduler(model)
    extra = Checkpointer(run_dir).load_latest(model=model, optimizer=optimizer, scheduler=scheduler)
    assert extra == {"sampler": {"cursor": 7}, "step": 2}, extra
    assert scheduler.last_epoch == 2
    loaded = _full_state(model, optimizer)
    if rank != 0:
        return
    saved = load_file(os.path.join(run_dir, "saved.safetensors"))
    assert loaded.keys() == saved.keys()
    differ = [k for k in saved if not torch.equal(saved[k], loaded[k])]
    assert not differ, differ[:3]
    with open(os.path.join(run_dir, "ok"), "w") as f:
        f.write(str(len(saved)))


def test_checkpoint_from_2_ranks_loads_at_4(tmp_path):
    spawn(_save, 2, str(tmp_path))
    spawn(_load, 4, str(tmp_path))
    assert int((tmp_path / "ok").read_text()) > 60  # weights and both Adam moments of every parameter matched
