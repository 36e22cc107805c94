"""The transformers backend's one-buffer caches and their merging across requests."""

from __future__ import annotations

import torch

from alignd.backends.kv_cache import CacheMerger, KVCache

LAYERS, HEADS, DIM = 2, 2, 4


def cache(rows: int, length: int, capacity: int = 40, seed: int = 0) -> KVCache:
    generator = torch.Generator().manual_seed(seed)
    buffer = torch.randn((LAYERS, 2, rows, HEADS, capacity, DIM), generator=generator)
    return KVCache(buffer, length)


def content(kv: KVCache) -> torch.Tensor:
    return kv.buffer[:, :, :, :, : kv.length].clone()


def step(merger: CacheMerger, caches: list[KVCache]) -> KVCache:
    """A merged one-token step: the new column holds each row's index, as a forward would write."""
    merged, spans, pads = merger.merge(caches)
    merged.buffer[:, :, :, :, merged.length] = torch.arange(merged.rows, dtype=torch.float32)[:, None, None]
    merged.advance(1)
    merger.hand_back(merged, caches, spans, pads)
    return merged


def test_select_gathers_rows_with_repeats_and_room():
    kv = cache(3, 5)
    chosen = kv.select(torch.tensor([2, 2, 0]), room=7)
    assert chosen.rows == 3 and chosen.length == 5 and chosen.capacity == 12
    assert torch.equal(content(chosen)[:, :, 0], content(kv)[:, :, 2])
    assert torch.equal(content(chosen)[:, :, 2], content(kv)[:, :, 0])


def test_reserve_grows_a_full_cache_keeping_its_content():
    kv = cache(1, 6, capacity=6)
    before = content(kv)
    kv.reserve(1)
    assert kv.capacity >= 12 and torch.equal(content(kv), before)


def test_merged_step_left_pads_each_request_and_hands_back_its_rows():
    short, long = cache(1, 3, seed=1), cache(2, 6, seed=2)
    before = [content(short), content(long)]
    merged, _, pads = CacheMerger().merge([short, long])
    assert pads == [3, 0] and merged.length == 6 and merged.rows == 3
    assert torch.equal(merged.buffer[:, :, 0:1, :, :3], torch.zeros_like(merged.buffer[:, :, 0:1, :, :3]))
    assert torch.equal(merged.buffer[:, :, 0:1, :, 3:6], before[0])
    merger = CacheMerger()
    step(merger, [short, long])
    assert short.length == 4 and long.length == 7
    assert torch.equal(content(short)[..., :3, :], before[0]) and torch.equal(content(long)[..., :6, :], before[1])
    assert bool((content(short)[..., 3, :] == 0).all()) and bool((content(long)[:, :, 1, :, 6] == 2).all())


def test_the_same_requests_stepping_again_reuse_the_merged_buffer():
    caches = [cache(1, 4, seed=3), cache(1, 4, seed=4)]
    merger = CacheMerger(headroom=4)
    first = step(merger, caches)
    second = step(merger, caches)
    assert second.buffer.data_ptr() == first.buffer.data_ptr()  # no copy
    assert caches[1].length == 6 and bool((content(caches[1])[..., 4:6, :] == 1).all())
    # A request joining means a new merge, in the other arena.
    third = step(merger, [*caches, cache(1, 2, seed=5)])
    assert third.buffer.data_ptr() != first.buffer.data_ptr()


def test_a_request_that_missed_steps_keeps_its_cache_when_the_arena_is_reused():
    a, b, c = cache(1, 4, seed=6), cache(1, 4, seed=7), cache(1, 4, seed=8)
    merger = CacheMerger()
    step(merger, [a, b])  # arena 1: a and b
    kept = content(b)
    step(merger, [a, c])  # arena 0; b sits this one out
    step(merger, [c])  # arena 1 again, overwritten in place: b's view must be copied out first
    assert torch.equal(content(b), kept)
