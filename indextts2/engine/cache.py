"""The KV cache of the decoder engine: one preallocated cache row per sequence slot.

Storage is `UnifiedVoice.new_kv_caches(num_slots, max_len)`: per layer a `KVCache` of shape
(num_slots, heads, max_len, head_dim). A sequence owns one row (its slot) from admission to
retirement and keeps its tokens at positions 0..length-1 of that row.

A forward pass does not see the whole storage but `CacheRows`: a view of some consecutive rows, read
up to `kv_len` positions. The attention layers only call `update(positions, k, v)` on it, as they do
on a `KVCache`, so the GPT code needs no engine-specific branch. A view makes two things cheap:
prefilling one sequence straight into its own row, and reading keys only as far as the longest
sequence of the batch has written (on the CPU; CUDA graphs read the fixed `max_len`).

Masks hide stale keys but do not keep them out of the arithmetic, so every position of a free row
holds zeros or finite values (see `release`).
"""

from __future__ import annotations

import heapq

import torch

from indextts2.networks.gpt import KVCache, UnifiedVoice


class CacheRows:
    """Rows [first, first + count) of one layer's `KVCache`; `update` has `KVCache.update`'s contract.

    positions (count, T) int64: where the T new tokens of each row go; k, v (count, heads, T, head_dim).
    Returns the keys and values of those rows at positions [0, kv_len).
    """

    def __init__(self, cache: KVCache, first: int, count: int, kv_len: int):
        self.k = cache.k[first : first + count]
        self.v = cache.v[first : first + count]
        self.kv_len = kv_len

    def update(
        self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        # Slices of the storage are views: writing into them writes into the storage.
        self.k.scatter_(2, index, k.to(self.k.dtype))
        self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k[:, :, : self.kv_len], self.v[:, :, : self.kv_len]


class KVCacheManager:
    """Owns the preallocated cache of `num_slots` sequences x `max_len` tokens and hands out slots.

    Not thread-safe: only the engine thread uses it. The lowest free slot is handed out first, so
    running sequences stay packed at the low rows and a decode step over rows [0, span) wastes
    little on free rows.
    """

    def __init__(
        self,
        model: UnifiedVoice,
        num_slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        if num_slots < 1 or max_len < 1:
            raise ValueError(f"need at least one slot and one position, got {num_slots} x {max_len}")
        self.num_slots = num_slots
        self.max_len = max_len
        self.layers: list[KVCache] = model.new_kv_caches(num_slots, max_len, dtype, device)
        self._free = list(range(num_slots))  # a heap
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def span(self) -> int:
        """1 + the highest slot in use (0 when none): the rows a decode step has to cover."""
        return max(self._used) + 1 if self._used else 0

    def in_use(self, slot: int) -> bool:
        return slot in self._used

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("no free KV cache slot")
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        return slot

    def release(self, slot: int, used_len: int) -> None:
        """Free a slot whose owner wrote positions [0, used_len); they are zeroed.

        A masked key still enters the attention arithmetic: a NaN or inf left behind by a failed
        sequence would turn the next owner's output into NaN although the mask hides it.
        """
        if slot not in self._used:
            raise ValueError(f"KV cache slot {slot} is not in use")
        for cache in self.layers:
            cache.k[slot, :, :used_len].zero_()
            cache.v[slot, :, :used_len].zero_()
        self._used.remove(slot)
        heapq.heappush(self._free, slot)

    def rows(self, first: int, count: int, kv_len: int) -> list[CacheRows]:
        """Per-layer views of rows [first, first + count), read up to `kv_len` positions."""
        if first < 0 or first + count > self.num_slots or not 0 < kv_len <= self.max_len:
            raise ValueError(
                f"rows [{first}, {first + count}) x {kv_len} do not fit {self.num_slots} x {self.max_len}"
            )
        return [CacheRows(cache, first, count, kv_len) for cache in self.layers]
