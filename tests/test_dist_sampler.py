"""The prompt sampler under data parallelism: every rank keeps its share of one global draw, so the
sampler's state does not depend on the world size and a resume at another one repeats nothing and
skips nothing."""

from __future__ import annotations

from longrl.data.dataset import PromptSampler


def _step(samplers: list[PromptSampler], count: int) -> list[int]:
    """One step's draw on every rank, in global order (rank r holds global positions r, r + W, ...)."""
    shares = [s.next_indices(count) for s in samplers]
    world = len(samplers)
    return [shares[i % world][i // world] for i in range(count)]


def test_ranks_split_one_global_draw_and_resume_at_any_world_size():
    size, per_step = 10, 4
    single = PromptSampler(size, seed=3)
    expected = [single.next_indices(per_step) for _ in range(6)]  # 2.4 epochs

    two = [PromptSampler(size, seed=3, rank=r, world=2) for r in range(2)]
    drawn = [_step(two, per_step) for _ in range(3)]
    state = two[0].state_dict()
    assert state == two[1].state_dict() == {"epoch": 1, "cursor": 2}  # the same state on every rank

    for world in (1, 4):  # resume the 2-rank run at another world size
        resumed = [PromptSampler(size, seed=3, rank=r, world=world) for r in range(world)]
        for s in resumed:
            s.load_state_dict(state)
        assert drawn + [_step(resumed, per_step) for _ in range(3)] == expected, world

    first = two[0].next_indices(per_step)
    second = two[1].next_indices(per_step)
    assert len(first) == len(second) == 2 and not set(first) & set(second)  # distinct prompts per rank
