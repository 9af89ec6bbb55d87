"""FSDP2 over 2 gloo ranks (CPU, fp32): the sharded model computes what the plain model computes.

One spawn checks, on each rank: the group log-probs and their gradients (FSDP's reduce-scatter
averages the two ranks' gradients, so they equal the mean of the plain model's gradients on both
ranks' data), and rollout under ``gathered`` (weights unsharded for ``generate``) against the plain
model's greedy tokens.
"""

from __future__ import annotations

import json
import os

import torch

from _checkpoint_tiny import tiny
from _dist import full_grad, spawn

WORLD = 2


def video_prompt(model, tokenizer, seed: int = 1, frames: int = 4):
    from longrl.data.vision_preprocess import preprocess_video
    from longrl.models.adapter import build_prompt

    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 255, (frames, 56, 56, 3), generator=g, dtype=torch.uint8).numpy()
    vision = preprocess_video(video, sample_fps=2.0, min_pixels=56 * 56, max_pixels=56 * 56)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "red enters?"}]}]
    return build_prompt(model, tokenizer, messages, vision)


RESPONSES = [[torch.tensor([5, 6, 7]), torch.tensor([8, 9])], [torch.tensor([11, 12, 13, 14]), torch.tensor([3])]]


def _loss(model, prompt, responses):
    from longrl.train.logprobs import group_logprobs

    out = group_logprobs(model, prompt, responses, train_vision=True, with_entropy=True)
    return sum(lp.sum() for lp in out.logprobs) + 0.1 * sum(e.sum() for e in out.entropy)


def _worker(rank: int, out_dir: str) -> None:
    from longrl.dist import DistConfig, gathered, init_distributed, parallelize
    from longrl.rollout import SamplingParams, generate

    env = init_distributed(DistConfig(), "cpu")
    plain, tokenizer = tiny()
    sharded, _ = tiny()
    parallelize(sharded, env.mesh, env.config)
    prompt = video_prompt(plain, tokenizer)
    plain.train()
    sharded.train()

    # plain: both ranks' data, gradients averaged by hand
    plain_losses = []
    for responses in RESPONSES:
        loss = _loss(plain, prompt, responses) / WORLD
        loss.backward()
        plain_losses.append(loss.item() * WORLD)
    sharded_loss = _loss(sharded, prompt, RESPONSES[rank])
    sharded_loss.backward()
    sharded_params = dict(sharded.named_parameters())
    diffs = {
        name: (full_grad(sharded_params[name]) - p.grad).abs().max().item()
        for name, p in plain.named_parameters()
        if p.grad is not None
    }
    missing = [name for name, p in plain.named_parameters() if p.grad is not None and sharded_params[name].grad is None]

    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=8, seed=0)
    plain.eval()
    sharded.eval()
    with torch.no_grad():
        expected = [s.token_ids for s in generate(plain, [prompt], params)[0]]
        with gathered(sharded):
            got = [s.token_ids for s in generate(sharded, [prompt], params)[0]]
    still_sharded = all(hasattr(p, "full_tensor") for p in sharded.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "plain_loss": plain_losses[rank],
                "sharded_loss": sharded_loss.item(),
                "grad_diffs": diffs,
                "missing": missing,
                "expected": expected,
                "got": got,
                "still_sharded": still_sharded,
                "param_types": sorted({type(p).__name__ for p in sharded.parameters()}),
            },
            f,
        )


def test_fsdp_equals_plain_model_forward_backward_and_greedy_rollout(tmp_path):
    spawn(_worker, WORLD, str(tmp_path))
    for rank in range(WORLD):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["param_types"] == ["DTensor"]  # every parameter is sharded (no unit left out)
        assert abs(r["plain_loss"] - r["sharded_loss"]) <= 1e-5, r
        assert r["missing"] == []
        assert len(r["grad_diffs"]) > 40  # text layers, vision blocks, embeddings and head all got gradients
        worst = max(r["grad_diffs"], key=r["grad_diffs"].get)
        assert r["grad_diffs"][worst] <= 1e-5, (worst, r["grad_diffs"][worst])
        assert r["got"] == r["expected"] and len(r["got"][0]) == 8
        assert r["still_sharded"]  # resharded after generate
