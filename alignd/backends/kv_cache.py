"""Key/value caches of the transformers backend: one buffer per request, merged across requests.

A request's cache keeps every layer's keys and values in one tensor
[layers, 2, rows, kv_heads, capacity, head_dim], filled up to `length` (padding inside it is
masked by the request's attention mask). One buffer rather than a tensor per layer, because:
- a decoding step writes its token in place (transformers' DynamicCache concatenates, copying
  the whole cache at every step);
- selecting rows (n candidates, K blocks) is one gather, and merging the caches of concurrent
  requests into one batch is one copy per request, not one per layer;
- merged requests get views of their rows of the merged buffer back, and when the same requests
  step together again the merged buffer is used as it is: a steady batch copies nothing.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class _BufferLayer(DynamicLayer):
    """One layer of a KVCache: reads and writes its slice of the owner's buffer."""

    def __init__(self, owner: KVCache, index: int) -> None:
        super().__init__()
        self._owner = weakref.ref(owner)  # not a strong cycle: caches are freed by refcount
        self.index = index
        self.dtype, self.device = owner.buffer.dtype, owner.buffer.device
        self.is_initialized = True

    @property
    def owner(self) -> KVCache:
        owner = self._owner()
        assert owner is not None, "a cache layer used after its cache"
        return owner

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = self.owner
        start = owner.length
        end = start + key_states.shape[-2]
        buffer = owner.buffer[self.index]
        buffer[0, :, :, start:end] = key_states
        buffer[1, :, :, start:end] = value_states
        self.keys, self.values = buffer[0, :, :, :end], buffer[1, :, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0


class KVCache(DynamicCache):
    """The cache handed to the model. After a forward of `w` new tokens, call `advance(w)`; before
    it, `reserve(w)` makes room."""

    def __init__(self, buffer: torch.Tensor, length: int) -> None:
        super().__init__()
        self.buffer = buffer
        self.length = length
        self._buffer_layers = [_BufferLayer(self, index) for index in range(buffer.shape[0])]
        self.layers = list(self._buffer_layers)
        # The owner's own buffer changes (reserve, keep, select, fill) and a merge leader
        # detaching it from an arena (another thread) take turns.
        self.lock = threading.Lock()

    @classmethod
    def empty(cls, config: Any, rows: int, capacity: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        """An empty cache for `rows` rows of a model with this (text) config."""
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, 2, rows, heads, capacity, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), 0)

    @property
    def rows(self) -> int:
        return self.buffer.shape[2]

    @property
    def capacity(self) -> int:
        return self.buffer.shape[4]

    def reserve(self, tokens: int) -> None:
        """Room for `tokens` more tokens: a larger buffer (at least double) when it is full."""
        with self.lock:
            if self.length + tokens > self.capacity:
                self.buffer = self._copy(slice(None), max(2 * self.capacity, self.length + tokens))

    def advance(self, tokens: int) -> None:
        """After a forward of `tokens` new tokens; the layers let go of their views."""
        self.length += tokens
        for layer in self._buffer_layers:
            layer.keys = layer.values = None

    def select(self, rows: torch.Tensor, room: int) -> KVCache:
        """A new cache with these rows (repeats allowed) and room for `room` more tokens."""
        with self.lock:
            return KVCache(self._copy(rows, self.length + room), self.length)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these rows (the others finished)."""
        with self.lock:
            self.buffer = self._copy(rows, self.capacity)

    def fill(self, source: KVCache, rows: slice, start: int) -> None:
        """Take these rows of `source`, from column `start` to its end, as this cache's content
        (a merged prefill handing each request its prompt)."""
        tokens = source.length - start
        self.reserve(tokens - self.length)
        with self.lock:
            self.buffer[:, :, :, :, :tokens] = source.buffer[:, :, rows, :, start : source.length]
            self.length = tokens

    def _copy(self, rows: torch.Tensor | slice, capacity: int) -> torch.Tensor:
        source = self.buffer[:, :, rows, :, : self.length]
        copied = source.new_empty((*source.shape[:4], capacity, source.shape[5]))
        copied[:, :, :, :, : self.length] = source
        return copied


class _Arena:
    """Memory that merged buffers are cut from, kept from step to step: writing a fresh buffer of
    a few hundred MB costs more in page faults than the copy itself (measured: 135 ms vs 34 ms
    for a 40-request batch of SmolLM2)."""

    def __init__(self) -> None:
        self.flat: torch.Tensor | None = None
        self.users: weakref.WeakSet[KVCache] = weakref.WeakSet()  # caches handed views of it

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape` in this arena. Caches still holding views of the
        last batch cut from it (requests that missed the steps since) get their own copy first."""
        for cache in list(self.users):
            with cache.lock:
                if cache.buffer._base is self.flat:
                    cache.buffer = cache.buffer.clone()
        self.users = weakref.WeakSet()
        size = math.prod(shape)
        flat = self.flat
        if flat is None or flat.numel() < size or flat.dtype != like.dtype or flat.device != like.device:
            flat = self.flat = like.new_empty(size + size // 4)  # slack: the next batch may be larger
        return flat[:size].view(shape)


class CacheMerger:
    """Builds the merged cache of a one-token step of several requests, and gives each request
    views of its rows back afterwards. Merged buffers alternate between two arenas (a merge
    reads the last one's views while writing the other). Remembers the last merge: when the
    same requests step together again with nothing else done to their caches, it is reused
    as it is. The arenas keep up to two merged batches' memory (bounded by the policy's
    max_batch_tokens plus headroom) while the server is idle."""

    def __init__(self, headroom: int = 32) -> None:
        self.headroom = headroom  # free columns in a merged buffer: steps it can be reused for
        self._arenas = (_Arena(), _Arena())
        self._current = 0  # the arena of the last merge
        self._last: tuple[torch.Tensor, int, list[weakref.ref[KVCache]], list[int]] | None = None

    def merge(self, caches: Sequence[KVCache]) -> tuple[KVCache, list[slice], list[int]]:
        """The merged cache (room for the step's token), each request's rows in it, and each
        request's left padding (columns before its first)."""
        spans, start = [], 0
        for cache in caches:
            spans.append(slice(start, start + cache.rows))
            start += cache.rows
        reused = self._reusable(caches, spans)
        if reused is not None:
            return reused
        width = max(cache.length for cache in caches)
        pads = [width - cache.length for cache in caches]
        first = caches[0].buffer
        self._current = 1 - self._current
        shape = (first.shape[0], 2, start, first.shape[3], width + 1 + self.headroom, first.shape[5])
        buffer = self._arenas[self._current].take(shape, first)
        for cache, rows, pad in zip(caches, spans, pads):
            if pad:  # masked out, but must be finite: a NaN times a zero attention weight is NaN
                buffer[:, :, rows, :, :pad] = 0
            buffer[:, :, rows, :, pad:width] = cache.buffer[:, :, :, :, : cache.length]
        return KVCache(buffer, width), spans, pads

    def hand_back(self, merged: KVCache, caches: Sequence[KVCache], spans: list[slice], pads: list[int]) -> None:
        """After the merged forward (merged advanced): point each cache at its rows of it."""
        arena = self._arenas[self._current]
        for cache, rows, pad in zip(caches, spans, pads):
            cache.buffer = merged.buffer[:, :, rows, :, pad:]
            cache.length = merged.length - pad
            arena.users.add(cache)
        self._last = (merged.buffer, merged.length, [weakref.ref(cache) for cache in caches], pads)

    def _reusable(self, caches: Sequence[KVCache], spans: list[slice]) -> tuple[KVCache, list[slice], list[int]] | None:
        """The last merged cache, if these are the same caches, in the same order, each still
        its view of it and stepped only together since (then their rows are where they were)."""
        if self._last is None:
            return None
        buffer, length, last, pads = self._last
        self._last = None
        if len(caches) != len(last) or length >= buffer.shape[4]:
            return None
        for cache, previous, rows, pad in zip(caches, last, spans, pads):
            if previous() is not cache or cache.length + pad != length:
                return None
            view = buffer[:, :, rows, :, pad:]
            if cache.buffer.data_ptr() != view.data_ptr() or cache.buffer.shape != view.shape:
                return None
        return KVCache(buffer, length), spans, pads
