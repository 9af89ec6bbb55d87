"""Sequence parallelism (Ulysses + frame-sharded vision) over 2 gloo processes equals one process:
group-forward log-probs, loss and every gradient; the vision tower forward and backward; the
rollout prefill KV and greedy tokens, with the prefix KV gathered or kept sharded by heads (tiny
fp32 models, 1e-5).

One spawn of 2 workers runs every check (process start-up dominates on a small CPU); each rank
writes what it measured, and the tests below assert on both ranks' figures."""

from __future__ import annotations

import copy
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from longrl.dist.sequence_parallel import SequenceParallelConfig, apply_sequence_parallel, average_gradients
from longrl.dist.ulysses import LOCAL, check_heads, sequence_parallel
from longrl.dist.vision import split_frames
from longrl.models.adapter import build_prompt, load_model
from longrl.models.config import ModelConfig, TinyModelConfig
from longrl.models.inputs import VisionInputs
from longrl.rollout import RolloutConfig, SamplingParams, generate
from longrl.rollout.decoder import TextDecoder
from longrl.rollout.prefill import prefill
from longrl.rollout.prompts import PromptEmbedder
from longrl.train.group_forward import enable_gradient_checkpointing, group_hidden
from longrl.train.logprobs import group_logprobs

WORLD = 2
TOL = 1e-5
MESSAGES = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which moved first?"}]}]


def _tiny(kv_heads: int, seed: int = 0):
    cfg = ModelConfig(dtype="float32", train_vision=True, tiny=TinyModelConfig(num_heads=4, num_kv_heads=kv_heads))
    texts = ["a red square enters at the top left, then the blue circle moves right."] * 8
    return load_model(cfg, tokenizer_texts=texts, seed=seed)


def _video(t: int, hw: int, seed: int) -> VisionInputs:
    g = torch.Generator().manual_seed(seed)
    return VisionInputs(torch.randn(t * hw * hw, 3 * 2 * 14 * 14, generator=g), torch.tensor([[t, hw, hw]]), 1.0)


def _weighted(values: list[torch.Tensor], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sum((torch.randn(v.shape, generator=g) * v).sum() for v in values)


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _grad_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a, (sorted(set(a) ^ set(b)), len(a))
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _loss_and_grads(model, prompt, responses, train_vision, loss_of, group):
    out = group_logprobs(model, prompt, responses, train_vision=train_vision, with_entropy=True)
    loss = loss_of(out)
    loss.backward()
    average_gradients(model, group)
    return (out, loss), _grads(model)


def _group_check(model, tok, responses_lens, train_vision: bool, seed: int) -> dict:
    """Group log-probs, entropies, the loss and gradients: sp=2 (model) vs one process (its copy)."""
    reference = copy.deepcopy(model)
    group = dist.group.WORLD
    prompt = build_prompt(reference, tok, MESSAGES, _video(4, 4, seed))  # 4 temporal groups, 16 video tokens
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    lens = list(responses_lens)
    if (len(prompt) + sum(lens)) % WORLD == 0:
        lens[-1] += 1  # a ragged total: the last rank's shard is padded
    responses = [torch.randint(0, vocab, (n,), generator=g) for n in lens]

    def loss_of(out):
        return _weighted(out.logprobs, 1) + _weighted(out.entropy, 2)

    ref = group_logprobs(reference, prompt, responses, train_vision=train_vision, with_entropy=True)
    ref_loss = loss_of(ref)
    ref_loss.backward()
    ref_grads = _grads(reference)

    apply_sequence_parallel(model, group)
    (out, loss), sp_grads = _loss_and_grads(model, prompt, responses, train_vision, loss_of, group)
    enable_gradient_checkpointing(model.train())  # recompute (and its all-to-alls) in backward
    (recomputed, _), recomputed_grads = _loss_and_grads(model, prompt, responses, train_vision, loss_of, group)
    model.gradient_checkpointing_disable()
    with torch.no_grad():  # transformers' own layers under the same sharding
        hf = group_logprobs(model, prompt, responses, layers="hf")
        split = group_logprobs(model, prompt, responses, backend="split")  # another layout, per head shard
        local_rows = group_hidden(model, prompt, responses)[0].shape[0]
        copied = group_logprobs(copy.deepcopy(model), prompt, responses)  # the RL loop's reference model
    return dict(
        total_len=len(prompt) + sum(lens),
        local_rows=local_rows,
        logp=_max_diff(ref.logprobs, out.logprobs),
        entropy=_max_diff(ref.entropy, out.entropy),
        loss=abs(ref_loss.item() - loss.item()),
        grads=_grad_diff(ref_grads, sp_grads),
        grad_count=len(sp_grads),
        recomputed_grads=_grad_diff(ref_grads, recomputed_grads),
        recomputed_layers=recomputed.info["checkpointed_layers"],
        vision_grads=sum(k.startswith("model.visual") for k in sp_grads),
        hf_logp=_max_diff(ref.logprobs, hf.logprobs),
        copied_logp=_max_diff(ref.logprobs, copied.logprobs),
        split_logp=_max_diff(ref.logprobs, split.logprobs),
    )


def _vision_check(visual, rank: int) -> dict:
    """Two videos (3 + 2 temporal groups of 12x12 patches: several attention windows per frame) on
    2 ranks: the split crosses the video boundary. Each rank's loss reads its own rows of the
    gathered output, as each rank's tokens do in the group forward."""
    pixels = torch.cat([_video(3, 12, 5).pixel_values, _video(2, 12, 6).pixel_values])
    grid = torch.tensor([[3, 12, 12], [2, 12, 12]])
    weight = torch.randn(5 * 36, visual.config.out_hidden_size, generator=torch.Generator().manual_seed(7))
    full = type(visual).forward(visual, pixels, grid).pooler_output
    (full * weight).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in visual.named_parameters()}
    visual.zero_grad(set_to_none=True)

    encoded = []
    hook = visual.patch_embed.register_forward_hook(lambda mod, args, out: encoded.append(args[0].shape[0]))
    out = visual(pixels, grid).pooler_output  # frame-sharded, gathered
    hook.remove()
    rows = torch.arange(out.shape[0]) % WORLD == rank
    (out * weight)[rows].sum().backward()
    for p in visual.parameters():
        dist.all_reduce(p.grad)  # the full loss is the sum of the ranks' losses
    sp_grads = {n: p.grad.clone() for n, p in visual.named_parameters()}
    visual.zero_grad(set_to_none=True)
    return dict(
        forward=(out - full).abs().max().item(),
        grads=_grad_diff(ref_grads, sp_grads),
        grad_count=len(sp_grads),
        encoded_patches=encoded,
    )


def _rollout_check(model, reference, tok, seed: int) -> dict:
    """Prefill KV and greedy samples, sp=2 (``model``) vs one process (``reference``, the same
    weights), with a prefill chunk that splits the prompt (and a ragged last chunk)."""
    vision = _video(4, 4, seed)
    ref_prompt = build_prompt(reference, tok, MESSAGES, vision)
    prompt = build_prompt(model, tok, MESSAGES, vision)  # frame-sharded vision tower
    embeds = (ref_prompt.video_embeds - prompt.video_embeds).abs().max().item()
    with torch.no_grad():
        ref_kv, ref_last = prefill(
            TextDecoder(reference), PromptEmbedder(TextDecoder(reference), ref_prompt), ref_prompt.position_ids, chunk=7
        )
        dec = TextDecoder(model)
        kv, last = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=7)
        # the sharded decode keeps the prefill's KV heads: this rank's one (of 2), or a copy of the only one
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("sp",))  # as parallelize passes it
        sharded = apply_sequence_parallel(copy.deepcopy(reference), mesh, SequenceParallelConfig(decode="sharded"))
        dec = TextDecoder(sharded)
        own_kv, _ = prefill(dec, PromptEmbedder(dec, prompt), prompt.position_ids, chunk=7)
        heads = ref_kv.k.shape[1]
        own = ref_kv.k[:, [dist.get_rank() * heads // WORLD]]
    params = SamplingParams(n=2, greedy=True, max_new_tokens=12)
    config = RolloutConfig(prefill_chunk_tokens=7)
    ref_tokens = [s.token_ids for s in generate(reference, [ref_prompt], params, config=config)[0]]
    tokens = [s.token_ids for s in generate(model, [prompt], params, config=config)[0]]
    sharded_tokens = [s.token_ids for s in generate(sharded, [prompt], params, config=config)[0]]
    return dict(
        embeds=embeds,
        prompt_len=len(prompt),
        kv=max((ref_kv.k - kv.k).abs().max().item(), (ref_kv.v - kv.v).abs().max().item()),
        kv_shape=list(kv.k.shape),
        ref_kv_shape=list(ref_kv.k.shape),
        own_kv_shape=list(own_kv.k.shape),
        own_kv=(own_kv.k - own).abs().max().item(),
        last=(ref_last - last).abs().max().item(),
        tokens=tokens,
        ref_tokens=ref_tokens,
        sharded_tokens=sharded_tokens,
    )


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    model, tok = _tiny(kv_heads=2)
    plain = copy.deepcopy(model)
    results["group"] = _group_check(model, tok, (6, 11, 1, 8), train_vision=True, seed=0)
    results["vision"] = _vision_check(model.model.visual, rank)
    model.zero_grad(set_to_none=True)
    plain.load_state_dict(model.state_dict())  # (no optimizer step ran: the same weights)
    results["rollout"] = _rollout_check(model, plain, tok, seed=3)
    sp = sequence_parallel(model)  # the embedding cache's agreement: hit on every rank, or encode together
    results["all_true"] = [sp.all_true(True), sp.all_true(rank == 0), LOCAL.all_true(rank == 0)]
    replicated, tok1 = _tiny(kv_heads=1, seed=1)  # 4 query heads, 1 KV head: replicated to both ranks
    plain = copy.deepcopy(replicated)
    results["group_replicated_kv"] = _group_check(replicated, tok1, (5, 9, 3), train_vision=False, seed=1)
    results["rollout_replicated_kv"] = _rollout_check(replicated, plain, tok1, seed=4)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("case", ["group", "group_replicated_kv"])
def test_group_forward_sp2_equals_one_process(measured, case):
    for rank in measured:
        m = rank[case]
        assert m["total_len"] % WORLD == 1  # padding exercised
        assert m["local_rows"] == (m["total_len"] + 1) // WORLD  # each rank ran its half of the tokens
        assert m["logp"] <= TOL and m["entropy"] <= TOL and m["hf_logp"] <= TOL and m["copied_logp"] <= TOL, m
        assert m["split_logp"] <= TOL, m
        assert m["loss"] <= TOL * 10, m  # a sum over ~30 weighted terms
        assert m["grads"] <= TOL and m["recomputed_grads"] <= TOL and m["recomputed_layers"] == 4, m
    assert measured[0]["group"]["vision_grads"] > 0  # the tower trained, frame-sharded
    assert measured[0]["group_replicated_kv"]["vision_grads"] == 0


def test_frame_sharded_vision_equals_unsharded(measured):
    for rank in measured:
        m = rank["vision"]
        assert m["forward"] <= TOL and m["grads"] <= TOL, m
        assert m["grad_count"] > 10
    assert [rank["all_true"] for rank in measured] == [[True, False, True], [True, False, False]]
    # rank 0 encoded the first video's 3 temporal groups, rank 1 the second's 2 (144 patches each)
    assert [rank["vision"]["encoded_patches"] for rank in measured] == [[3 * 144], [2 * 144]]


@pytest.mark.parametrize("case", ["rollout", "rollout_replicated_kv"])
def test_rollout_sp2_equals_one_process(measured, case):
    for rank in measured:
        m = rank[case]
        assert m["prompt_len"] > 2 * 7  # several prefill steps of 7 tokens per rank
        assert m["kv_shape"] == m["ref_kv_shape"]  # every rank holds the whole prefix KV
        assert m["embeds"] <= TOL and m["kv"] <= TOL and m["last"] <= TOL, m
        assert m["tokens"] == m["ref_tokens"] and len(m["tokens"][0]) == 12, m
        # sharded decode: each rank keeps one KV head of the prefix, and decodes the same tokens
        assert m["own_kv_shape"] == [m["ref_kv_shape"][0], 1, *m["ref_kv_shape"][2:]] and m["own_kv"] <= TOL, m
        assert m["sharded_tokens"] == m["ref_tokens"], m
    assert measured[0]["rollout"]["tokens"] == measured[1]["rollout"]["tokens"]


def test_frame_split_is_balanced_and_consecutive():
    shares = split_frames([[3, 4, 4], [2, 4, 4]], 2, 2)
    assert [s.grid_thw for s in shares] == [[[3, 4, 4]], [[2, 4, 4]]]
    assert [s.patch_rows for s in shares] == [(0, 48), (48, 80)]
    assert [s.merged_rows for s in shares] == [(0, 12), (12, 20)]
    shares = split_frames([[5, 2, 2]], 2, 2)
    assert [s.grid_thw for s in shares] == [[[3, 2, 2]], [[2, 2, 2]]]
    shares = split_frames([[1, 4, 4]], 2, 2)  # fewer temporal groups than ranks
    assert [s.grid_thw for s in shares] == [[[1, 4, 4]], []] and shares[1].merged_rows == (4, 4)


def test_sp_degree_must_fit_the_heads():
    check_heads(4, 16, 2)  # Qwen2.5-VL-3B at sp=4: KV heads replicated
    check_heads(2, 16, 2)
    with pytest.raises(ValueError, match=r"dist.sp=3 does not divide the model's 16 attention heads"):
        check_heads(3, 16, 2)
    with pytest.raises(
        ValueError, match=r"dist.sp=4 and the model's 6 KV heads: one must divide the other.*\[1, 2, 3, 6"
    ):
        check_heads(4, 12, 6)
