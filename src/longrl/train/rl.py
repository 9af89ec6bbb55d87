"""The RL loop: rollout -> reward -> advantage -> update -> log -> checkpoint.

GRPO by default; DAPO, REINFORCE++, RLOO, Dr.GRPO and GSPO are settings of the same loop
(``algorithm.name`` presets). One step draws ``rl.prompts_per_step`` prompts, samples
``rollout.n`` responses for each, and updates the policy ``ppo_epochs x mini_batches`` times.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longrl.data.dataset import Example, PromptSampler, draw_examples
from longrl.data.prompt import encode_prompts
from longrl.dist import current as dist_env, data_parallel as dp, gathered, parallelize
from longrl.dist.env import all_true, max_int, sum_floats
from longrl.dist.gather import gather_to_main
from longrl.infra.checkpoint import Checkpointer
from longrl.infra.guard import NonFiniteGuard
from longrl.infra.hf_files import ProcessorSpec
from longrl.infra.metrics import MetricsLogger, PhaseTimer, peak_memory_gb
from longrl.infra.run_dir import claim_run_dir
from longrl.models.adapter import end_of_turn_id
from longrl.models.inputs import Prompt
from longrl.rewards.model import build_reward
from longrl.rewards.registry import RewardInput
from longrl.rl.advantages import compute_advantages
from longrl.rl.dynamic_sampling import BatchFiller, overlong_penalty
from longrl.rl.losses import kl_penalty, policy_loss
from longrl.rollout import SamplingParams, generate
from longrl.train.logprobs import group_logprobs
from longrl.train.microbatch import accumulation_normalizer, pad_ragged, split_group
from longrl.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("longrl.rl")


@dataclass
class Group:
    """One prompt and its n sampled responses, with everything the update needs."""

    prompt: Prompt
    example: Example | None  # None where the group is not scored (the benchmarks' step, tests)
    responses: list[torch.Tensor]
    old_logp: list[torch.Tensor]  # sampling log-probs, stored at rollout time
    finished: list[bool]  # False where the response hit max_new_tokens
    rewards: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    components: list[dict[str, float]] = field(default_factory=list)
    ref_logp: list[torch.Tensor] | None = None


def rollout(model, tokenizer, prompts: list[Prompt], examples: list[Example], cfg, seed: int) -> list[Group]:
    params = SamplingParams.from_config(cfg.rollout, seed=seed, stop_token_ids=(end_of_turn_id(tokenizer),))
    groups = []
    for prompt, example, samples in zip(prompts, examples, generate(model, prompts, params, config=cfg.rollout)):
        device = prompt.input_ids.device
        groups.append(
            Group(
                prompt=prompt,
                example=example,
                responses=[torch.tensor(s.token_ids, dtype=torch.long, device=device) for s in samples],
                old_logp=[torch.tensor(s.logprobs, dtype=torch.float32, device=device) for s in samples],
                finished=[s.finish_reason == "stop" for s in samples],
            )
        )
    return groups


def score(groups: list[Group], tokenizer, reward_model, cfg) -> None:
    """Fill ``rewards`` and ``components`` of each group (DAPO's overlong penalty included)."""
    inputs: list[RewardInput] = []
    for g in groups:
        assert g.example is not None, "a scored group keeps its dataset example"
        row = g.example.row
        inputs += [
            RewardInput(
                sample_id=f"{row.id}#{i}",
                response=tokenizer.decode(r, skip_special_tokens=True),
                answer=row.answer,
                options=row.options or None,
                question=row.question,
                row=row.to_dict(),
            )
            for i, r in enumerate(g.responses)
        ]
    results = iter(reward_model(inputs))
    algo = cfg.algorithm
    for g in groups:
        scored = [next(results) for _ in g.responses]
        rewards = torch.tensor([r.score for r in scored], dtype=torch.float32)
        if algo.overlong_buffer > 0:
            lengths = [len(r) for r in g.responses]
            rewards = rewards - overlong_penalty(
                lengths, cfg.rollout.max_new_tokens, algo.overlong_buffer, algo.overlong_penalty
            )
        g.rewards, g.components = rewards, [r.components for r in scored]


def collect(
    model, tokenizer, data, sampler: PromptSampler, reward_model, cfg, step: int, timer
) -> tuple[list[Group], list[Group], dict[str, float]]:
    """Sample and score one step's groups. With DAPO dynamic sampling, groups whose rewards are all
    equal (no learning signal) are dropped and sampling goes on until the batch is full or
    ``max_tries`` rounds have run."""
    share = cfg.rl.prompts_per_step // sampler.world  # this dp rank's share of the step's prompts
    filler = BatchFiller(share, cfg.algorithm.max_tries)
    seen: list[Group] = []
    while not all_true(filler.done):  # every dp rank draws the same rounds: the sampler stays in step
        examples = draw_examples(data, sampler, share, agree_max=max_int)
        with timer("encode"):
            prompts = encode_prompts(model, tokenizer, examples)
        with timer("rollout"):
            seed = cfg.trainer.seed * 1_000_003 + step * 101 + filler.tries + 7_919 * sampler.rank
            groups = rollout(model, tokenizer, prompts, examples, cfg, seed)
        with timer("reward"):
            score(groups, tokenizer, reward_model, cfg)
        seen += groups
        if not cfg.algorithm.dynamic_sampling:
            return groups, seen, {"rollout/groups_seen": len(seen), "rollout/tries": 1}
        filler.add(groups, rewards=[g.rewards for g in groups])
    info: dict[str, float] = {"rollout/groups_seen": len(seen), "rollout/tries": filler.tries}
    return filler.take(), seen, info


def mini_batches(num_groups: int, count: int) -> list[list[int]]:
    """Split group indices into at most ``count`` contiguous, near-equal mini-batches (the LR
    schedule counts ``ppo_epochs x mini_batches`` optimizer steps per RL step)."""
    size = max(1, math.ceil(num_groups / count))
    return [list(range(start, min(start + size, num_groups))) for start in range(0, num_groups, size)]


def policy_update(
    model,
    optimizer,
    scheduler,
    groups: list[Group],
    advantages: list[torch.Tensor],
    cfg,
    guard: NonFiniteGuard,
    step: int,
) -> dict[str, float]:
    """``ppo_epochs`` passes of ``mini_batches`` optimizer steps over the groups; each group is one
    (or, over the token budget, a few) group forward(s) with gradient accumulation."""
    algo = cfg.algorithm
    sums: dict[str, float] = {}
    count = 0
    grad_norms: list[float] = []
    for _ in range(algo.ppo_epochs):
        for batch in dp.pad_batches(mini_batches(len(groups), algo.mini_batches)):  # same count on every dp rank
            lens = [len(r) for i in batch for r in groups[i].responses]
            normalizer = accumulation_normalizer(algo.loss_agg, dp.global_lengths(lens))
            optimizer.zero_grad(set_to_none=True)
            total_loss = torch.zeros(())
            micro = [
                (i, sub)
                for i in batch
                for sub in split_group(
                    len(groups[i].prompt), [len(r) for r in groups[i].responses], cfg.rl.micro_batch_tokens
                )
            ]
            runs_vision = lambda m: cfg.model.train_vision and groups[m[0]].prompt.vision is not None  # noqa: E731
            for (i, sub), scale in dp.pad_micro_batches(micro, (0, [0]), runs_vision):  # scale 0: padding
                g = groups[i]
                fwd = group_logprobs(
                    model,
                    g.prompt,
                    [g.responses[j] for j in sub],
                    temperature=cfg.rollout.temperature,
                    train_vision=cfg.model.train_vision,
                    with_entropy=algo.entropy_coef > 0,  # the entropy bonus is its only reader
                    backend=cfg.rl.group_attention,
                )
                logp, mask = pad_ragged(fwd.logprobs)
                old, _ = pad_ragged([g.old_logp[j] for j in sub])
                ref = pad_ragged([g.ref_logp[j] for j in sub])[0] if g.ref_logp is not None else None
                entropy = pad_ragged(fwd.entropy)[0] if fwd.entropy is not None else None
                adv = advantages[i][sub].to(logp.device)  # rewards (so advantages) are CPU tensors
                if adv.dim() == 2:  # token-level (REINFORCE++): padded to the step's longest response
                    adv = adv[:, : logp.shape[1]]
                loss, metrics = policy_loss(
                    logp, old, adv, mask, algo, normalizer=normalizer, ref_logp=ref, entropy=entropy
                )
                (loss * scale).backward()
                if scale == 0:
                    continue
                total_loss = total_loss + loss.detach().cpu()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            grad_norm = dp.local_value(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.rl.optim.grad_clip))
            if guard.check(total_loss, grad_norm, step=step):
                optimizer.step()
            else:
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            grad_norms.append(float(grad_norm))
    out = {f"actor/{k}": v for k, v in dp.mean_over_ranks(sums, count).items()}
    out["actor/grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["actor/clip_frac"] = out.get("actor/clip_frac_low", 0.0) + out.get("actor/clip_frac_high", 0.0)
    out["actor/lr"] = scheduler.get_last_lr()[0]
    out["actor/skipped_updates"] = guard.skipped  # non-finite updates over the run (NonFiniteGuard)
    return out


def reference_logprobs(ref_model, groups: list[Group], cfg) -> None:
    with torch.no_grad():
        for g in groups:
            g.ref_logp = group_logprobs(
                ref_model,
                g.prompt,
                g.responses,
                temperature=cfg.rollout.temperature,
                train_vision=cfg.model.train_vision,
                backend=cfg.rl.group_attention,
            ).logprobs


def step_advantages(groups: list[Group], cfg) -> tuple[list[torch.Tensor], dict[str, float]]:
    algo = cfg.algorithm
    token_kl = mask = None
    metrics: dict[str, float] = {}
    fold_kl = algo.kl_in_reward and algo.kl_coef > 0
    if fold_kl or algo.advantage == "reinforce_pp":  # REINFORCE++ whitens over response tokens, KL or not
        logp, mask = pad_ragged([lp for g in groups for lp in g.old_logp])
    if fold_kl:
        ref_logp: list[torch.Tensor] = []
        for g in groups:
            assert g.ref_logp is not None, "the KL in the reward needs the reference log-probs (kl_coef > 0)"
            ref_logp += g.ref_logp
        ref, _ = pad_ragged(ref_logp)
        token_kl = kl_penalty(logp, ref, algo.kl_estimator)
        metrics["actor/kl_in_reward"] = dp.global_mean(token_kl[mask])
    # REINFORCE++ whitens over the global batch (statistics summed over the dp ranks)
    flat = compute_advantages(algo, [g.rewards for g in groups], token_kl=token_kl, mask=mask, batch_sum=dp.batch_sum())
    sizes = [len(g.responses) for g in groups]
    return list(flat.split(sizes)), metrics


def rollout_metrics(groups: list[Group], seen: list[Group], gather_chunks: int = 0) -> dict[str, float]:
    """Over every dp rank's samples (gathered to rank 0 in pieces); an empty dict on other ranks."""
    kept, groups_seen, tokens = sum_floats([len(groups), len(seen), sum(len(r) for g in seen for r in g.responses)])
    records = gather_to_main(
        [
            (float(g.rewards[i]), len(r), g.finished[i], g.components[i])
            for g in seen
            for i, r in enumerate(g.responses)
        ],
        gather_chunks,
    )
    if records is None:
        return {}
    rewards = torch.tensor([r[0] for r in records])
    lengths = torch.tensor([float(r[1]) for r in records])
    out = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/clipped_frac": 1.0 - sum(r[2] for r in records) / lengths.numel(),
        "rollout/groups_kept": int(kept),
        "rollout/groups_seen": int(groups_seen),
        "rollout/tokens": int(tokens),
    }
    names = {k for r in records for k in r[3]}
    for name in sorted(names):
        values = [r[3].get(name, 0.0) for r in records]
        out[f"reward/{name}"] = sum(values) / len(values)
    return out


def train_rl(model, tokenizer, data, cfg, run_dir: str | Path, *, progress: bool = True) -> dict[str, float]:
    """Run ``cfg.rl.steps`` RL steps on ``data`` (an ExampleSet); resumes from ``run_dir`` checkpoints."""
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, cfg.trainer.resume, "rl")
    algo = cfg.algorithm
    env = dist_env()  # longrl.dist.init_distributed: one process, or torchrun's ranks
    updates_per_step = algo.ppo_epochs * algo.mini_batches
    reward_model = build_reward(cfg.reward)
    ref_model = None
    if algo.kl_coef > 0:  # kl_coef = 0 removes the reference model entirely
        ref_model = parallelize(copy.deepcopy(model).eval().requires_grad_(False), env.mesh, env.config)
    parallelize(model, env.mesh, env.config)  # FSDP2 over the dp ranks; the optimizer takes its sharded parameters
    optimizer = build_optimizer(model, cfg.rl.optim)
    scheduler = build_scheduler(optimizer, cfg.rl.optim, cfg.rl.steps * updates_per_step)
    sampler = PromptSampler(len(data), seed=cfg.trainer.seed, rank=env.dp_rank, world=env.dp_size)
    checkpointer = Checkpointer(
        run_dir,
        keep_last=cfg.trainer.keep_last,
        tokenizer=tokenizer,
        processor=ProcessorSpec.from_model(model, cfg.data.min_pixels, cfg.data.max_pixels),
    )
    guard = NonFiniteGuard(cfg.trainer.max_nonfinite_steps, checkpointer)
    start = 0
    if cfg.trainer.resume == "auto":
        state = checkpointer.load_latest(model=model, optimizer=optimizer, scheduler=scheduler)
        if state is not None:
            start = int(state["step"])
            sampler.load_state_dict(state["sampler"])
            guard.load_state_dict(state.get("guard", {}))  # older checkpoints hold no guard state
            log.info("resumed from step %d", start)
    logger = MetricsLogger(
        run_dir,
        total_steps=cfg.rl.steps,
        log_every=cfg.trainer.log_every,
        tensorboard=cfg.trainer.tensorboard,
        wandb=cfg.trainer.wandb,
        wandb_project=cfg.trainer.wandb_project,
        desc="rl",
        start_step=start,
        progress=progress and cfg.trainer.progress,
    )
    timer = PhaseTimer()
    last: dict[str, float] = {}
    for step in range(start, cfg.rl.steps):
        model.eval()
        with torch.no_grad(), gathered(model):  # rollout on the live weights, unsharded for the phase
            groups, seen, info = collect(model, tokenizer, data, sampler, reward_model, cfg, step, timer)
        if ref_model is not None:
            with timer("ref_logprobs"), gathered(ref_model):
                reference_logprobs(ref_model, groups, cfg)
        actor: dict[str, float] = {}
        if all_true(bool(groups)):  # dynamic sampling can come back empty-handed; then this step only logs
            advantages, actor = step_advantages(groups, cfg)
            model.train()
            with timer("update"):
                actor |= policy_update(model, optimizer, scheduler, groups, advantages, cfg, guard, step + 1)
        times = timer.pop()
        last = {
            **info,
            **rollout_metrics(groups, seen, env.config.gather_chunks),
            **actor,
            **times,
            **reward_model.pop_metrics(),
            "data/skipped_rows": data.num_skipped,
        }
        tokens = last.get("rollout/tokens", 0)  # over all dp ranks
        last |= {
            "perf/rollout_tok_s": tokens / max(times.get("time/rollout", 0.0), 1e-9),
            "perf/step_tok_s": tokens / max(sum(times.values()), 1e-9),
            "perf/peak_mem_gb": peak_memory_gb(reset=True),
        }
        logger.log(step + 1, last)
        if step + 1 == cfg.rl.steps or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0):
            checkpointer.save(
                step + 1,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                extra={"sampler": sampler.state_dict(), "guard": guard.state_dict()},
            )
    logger.close()
    model.eval()
    return last
