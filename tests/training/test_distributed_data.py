"""`ShardedSampler`: ranks read disjoint slices that together are exactly the one-process global batches, and a
position saved at any world size resumes at the next unseen sample on any other (no processes needed)."""

from __future__ import annotations

import itertools

import pytest

from multimodal.training.data_sharding import ShardedSampler


def steps(sampler: ShardedSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(sampler.local_batches(), n))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_split_each_global_batch_without_overlap(world):
    n, gb, n_steps = 50, 8, 14                                # 6 steps per epoch: crosses two epoch boundaries
    single = steps(ShardedSampler(n, gb, seed=3), n_steps)
    per_rank = [steps(ShardedSampler(n, gb, rank=r, world_size=world, seed=3), n_steps) for r in range(world)]
    for s in range(n_steps):
        parts = [per_rank[r][s] for r in range(world)]
        assert all(len(p) == gb // world for p in parts)
        assert sum(parts, []) == single[s]                     # same samples, same order as one process
    for epoch in range(2):                                     # within an epoch no sample repeats
        seen = sum(single[epoch * 6:(epoch + 1) * 6], [])
        assert len(seen) == len(set(seen)) == 48
    assert single[0] != single[6]                              # a new order each epoch


def test_resume_on_another_world_size_continues_at_the_next_sample():
    n, gb = 40, 4
    reference = steps(ShardedSampler(n, gb, seed=1), 15)
    saved = [ShardedSampler(n, gb, rank=r, world_size=2, seed=1) for r in range(2)]
    for s in saved:
        steps(s, 7)
    state = saved[0].state_dict()
    assert state == saved[1].state_dict()                      # rank independent
    resumed = [ShardedSampler(n, gb, rank=r, world_size=4, seed=1) for r in range(4)]
    for s in resumed:
        s.load_state_dict(state)
    after = [steps(s, 8) for s in resumed]
    assert [sum((after[r][i] for r in range(4)), []) for i in range(8)] == reference[7:15]


def test_iterating_for_a_dataloader_matches_local_batches():
    s = ShardedSampler(20, 4, rank=1, world_size=2, seed=0)
    s.advance(2)
    flat = list(s)
    assert len(flat) == len(s) == 3 * 2
    t = ShardedSampler(20, 4, rank=1, world_size=2, seed=0)
    t.samples_seen = 8
    assert flat == sum(steps(t, 3), [])


def test_bad_arguments_and_mismatched_resume_are_errors():
    with pytest.raises(ValueError, match="multiple of the world size"):
        ShardedSampler(10, 3, rank=0, world_size=2)
    with pytest.raises(ValueError, match="outside"):
        ShardedSampler(10, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedSampler(3, 4)
    s = ShardedSampler(10, 2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({**s.state_dict(), "seed": 5})
