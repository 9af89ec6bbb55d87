"""Data parallel RL update: 2 gloo ranks (FSDP2, CPU, fp32) equal one process over the same global batch.

Four groups, two mini-batches, token-mean loss, and a micro-batch token budget that splits the
groups unevenly, so rank 0 runs fewer group forwards than rank 1 and pads (loss scaled by 0).
The sampler deals the step's draw out by rank (global groups 0, 2 on rank 0; 1, 3 on rank 1), so
rank r's k-th mini-batch holds the global k-th mini-batch's groups of rank r.
"""

from __future__ import annotations

import json
import os

import torch

from _checkpoint_tiny import tiny
from _dist import spawn
from test_dist_fsdp import video_prompt

WORLD = 2
OVERRIDES = [
    "algorithm.loss_agg=token_mean",
    "algorithm.mini_batches=2",
    "algorithm.kl_coef=0",
    "rl.micro_batch_tokens=40",
    "rl.optim.grad_clip=1e9",
    "rl.prompts_per_step=4",
]
LENGTHS = [[3, 2], [6, 5, 4, 7], [2, 4], [5, 1, 3]]  # responses per global group


def _groups(model, tokenizer):
    from longrl.train.rl import Group

    prompt = video_prompt(model, tokenizer)
    g = torch.Generator().manual_seed(3)
    groups, advantages = [], []
    for lens in LENGTHS:
        responses = [torch.randint(3, 200, (n,), generator=g) for n in lens]
        old = [-2.0 - torch.rand(n, generator=g) for n in lens]
        groups.append(
            Group(prompt=prompt, example=None, responses=responses, old_logp=old, finished=[True] * len(lens))
        )
        advantages.append(torch.randn(len(lens), generator=g))
    return groups, advantages


def _update(model, groups, advantages, cfg) -> dict:
    from longrl.infra.guard import NonFiniteGuard
    from longrl.train.rl import policy_update

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model.train()
    return policy_update(model, optimizer, scheduler, groups, advantages, cfg, NonFiniteGuard(5), step=1)


def _worker(rank: int, out_dir: str) -> None:
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from longrl.config import load_config
    from longrl.data.dataset import PromptSampler
    from longrl.dist import init_distributed, parallelize

    cfg = load_config(None, OVERRIDES)
    env = init_distributed(cfg.dist, "cpu")
    model, tokenizer = tiny()
    groups, advantages = _groups(model, tokenizer)
    mine = PromptSampler(len(groups), seed=0, rank=env.dp_rank, world=env.dp_size)
    mine._order = list(range(len(groups)))  # deal the groups out in their global order
    share = mine.next_indices(len(groups))
    parallelize(model, env.mesh, env.config)
    metrics = _update(model, [groups[i] for i in share], [advantages[i] for i in share], cfg)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, os.path.join(out_dir, "dp.safetensors"))
    from longrl.dist import data_parallel

    try:  # rank 0's micro-batch runs the vision tower, rank 1's does not: refused on both ranks, no hang
        data_parallel.pad_micro_batches(["a"], "a", lambda item: rank == 0)
        mixed_error = ""
    except ValueError as err:
        mixed_error = str(err)
    with open(os.path.join(out_dir, f"metrics{rank}.json"), "w") as f:
        json.dump({"share": share, "mixed_error": mixed_error, **metrics}, f)


def test_dp2_update_equals_one_process_over_the_global_batch(tmp_path):
    from safetensors.torch import load_file

    from longrl.config import load_config

    spawn(_worker, WORLD, str(tmp_path))
    model, tokenizer = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups, advantages = _groups(model, tokenizer)
    expected = _update(model, groups, advantages, load_config(None, OVERRIDES))
    got = [json.loads((tmp_path / f"metrics{r}.json").read_text()) for r in range(WORLD)]
    from longrl.train.microbatch import split_group

    forwards = [len(split_group(len(groups[0].prompt), lens, 40)) for lens in LENGTHS]
    assert forwards[0] + forwards[2] < forwards[1] + forwards[3]  # rank 0 pads: the padding path runs
    assert got[0]["share"] == [0, 2] and got[1]["share"] == [1, 3]
    assert got[0]["mixed_error"] == got[1]["mixed_error"]
    assert got[0]["mixed_error"].startswith("data parallel training of the vision tower (model.train_vision=true)")
    for key in ("actor/loss", "actor/pg_loss", "actor/grad_norm"):
        for r in range(WORLD):
            assert abs(got[r][key] - expected[key]) <= 1e-5 * max(1.0, abs(expected[key])), (
                key,
                got[r][key],
                expected[key],
            )
    dp = load_file(str(tmp_path / "dp.safetensors"))
    after = model.state_dict()
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(moved) > 40  # the update reached text layers, vision blocks, embeddings and head
    for key, value in after.items():
        # SGD(lr=0.5): parameter change = -0.5 x gradient, so this compares the summed gradients
        assert (dp[key] - value).abs().max().item() <= 1e-5, key
