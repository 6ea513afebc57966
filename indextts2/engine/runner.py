"""Model runner: the GPT passes of the engine, on rows of the shared KV cache.

- `prefill`: one new sequence alone, its whole prefix plus the start code, written into its own row.
- `decode`: ONE step for the given sequences together. Row r of the batch is cache slot r, for
  r in [0, highest slot + 1); free slots among them are computed too (they write and read position 0
  of their own free row, so they touch nobody) and their outputs dropped. Every other row in that
  range must be free: a batch of fewer than the running sequences (the engine's retry after running
  out of memory) takes the lowest slots. Each row writes its new token
  at its own position and its query reads keys [0, length) of its own row only (a per-row key mask).

On CUDA, where asked for (`use_cuda_graphs`, off by default: never run on a GPU yet), the decode step
is captured once per batch bucket (1, 2, 4, ..., max_slots) in a CUDA graph and the batch is padded
to the bucket with the rows past the span, all free. The CPU path never touches that code.
"""

from __future__ import annotations

import torch

from indextts2.engine.cache import KVCacheManager
from indextts2.networks.gpt import UnifiedVoice, causal_mask


def decode_rows(
    model: UnifiedVoice,
    cache: KVCacheManager,
    codes: torch.Tensor,
    mel_positions: torch.Tensor,
    cache_positions: torch.Tensor,
    lengths: torch.Tensor,
    key_index: torch.Tensor,
) -> torch.Tensor:
    """One decoding step for cache rows [0, R): feed codes (R,) at mel positions (R,), write them at
    cache positions (R,); row r attends to its keys [0, lengths[r]). `key_index` is arange(kv_len)
    (kv_len >= max(lengths)). -> (R, d) `final_norm` hidden states."""
    rows = codes.shape[0]
    embeds = model.mel_embeddings(codes[:, None], mel_positions[:, None]).to(cache.layers[0].k.dtype)
    key_valid = key_index[None, :] < lengths[:, None]
    layers = cache.rows(0, rows, key_index.shape[0])
    hidden = model.decode(embeds, key_valid[:, None, None, :], layers, cache_positions[:, None])
    return hidden[:, 0]


def batch_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, ... up to max_rows, and max_rows itself."""
    buckets, size = [], 1
    while size < max_rows:
        buckets.append(size)
        size *= 2
    return [*buckets, max_rows]


class CudaDecodeGraphs:
    """The decode step captured in one CUDA graph per batch bucket, over the full cache length.

    NOTE: written without access to a GPU and not run yet.
    """

    def __init__(self, model: UnifiedVoice, cache: KVCacheManager):
        device = cache.layers[0].k.device
        max_rows = cache.num_slots
        self.model, self.cache = model, cache
        self.buckets = batch_buckets(max_rows)
        # Static inputs: each replay reads them; `run` copies the step's values in.
        self.codes = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.mel_positions = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.cache_positions = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.lengths = torch.ones(max_rows, dtype=torch.long, device=device)
        self.key_index = torch.arange(cache.max_len, device=device)
        self.hidden: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

        # Warm-up on a side stream (cuBLAS handles, allocator), as capture requires. There are no
        # sequences yet, so the position-0 writes into the cache rows do no harm.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for bucket in self.buckets:
                for _ in range(2):
                    self._forward(bucket)
        torch.cuda.current_stream(device).wait_stream(side)
        pool = None
        for bucket in reversed(self.buckets):  # the largest first, the others reuse its memory pool
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other threads (other Triton models) must not break capture.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                self.hidden[bucket] = self._forward(bucket)
            pool = graph.pool()
            self.graphs[bucket] = graph
        torch.cuda.synchronize(device)

    def _forward(self, rows: int) -> torch.Tensor:
        return decode_rows(
            self.model,
            self.cache,
            self.codes[:rows],
            self.mel_positions[:rows],
            self.cache_positions[:rows],
            self.lengths[:rows],
            self.key_index,
        )

    def run(
        self,
        codes: torch.Tensor,
        mel_positions: torch.Tensor,
        cache_positions: torch.Tensor,
        lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, int]:
        """-> ((R, d) hidden states, valid until the next replay; the bucket size that ran)."""
        rows = codes.shape[0]
        bucket = next(b for b in self.buckets if b >= rows)
        self.codes[:rows].copy_(codes)
        self.mel_positions[:rows].copy_(mel_positions)
        self.cache_positions[:rows].copy_(cache_positions)
        self.lengths[:rows].copy_(lengths)
        # Padding rows are free slots (every slot >= span is free): write and read their position 0.
        self.codes[rows:bucket].zero_()
        self.mel_positions[rows:bucket].zero_()
        self.cache_positions[rows:bucket].zero_()
        self.lengths[rows:bucket].fill_(1)
        self.graphs[bucket].replay()
        return self.hidden[bucket][:rows], bucket


class ModelRunner:
    def __init__(self, model: UnifiedVoice, cache: KVCacheManager, use_cuda_graphs: bool = False):
        self.model = model
        self.cache = cache
        self.device = cache.layers[0].k.device
        self.dtype = cache.layers[0].k.dtype
        self._key_index = torch.arange(cache.max_len, device=self.device)
        self.cuda_graphs: CudaDecodeGraphs | None = None
        if self.device.type == "cuda" and use_cuda_graphs:
            self.cuda_graphs = CudaDecodeGraphs(model, cache)

    def prefill(self, slot: int, prefix: torch.Tensor) -> torch.Tensor:
        """Run prefix (P, d) + the start code (mel position 0) into cache row `slot`, positions
        0..P. -> (d,) the `final_norm` hidden state at the start code (it predicts code 0)."""
        model = self.model
        start = torch.tensor([[model.start_mel_token]], device=self.device)
        start_embed = model.mel_embeddings(start, torch.zeros_like(start))
        embeds = torch.cat([prefix[None].to(self.dtype), start_embed.to(self.dtype)], dim=1)
        length = embeds.shape[1]
        if length > self.cache.max_len:
            raise ValueError(f"prefix of {length} tokens does not fit the cache length {self.cache.max_len}")
        positions = torch.arange(length, device=self.device)[None]
        layers = self.cache.rows(slot, 1, length)
        hidden = model.decode(embeds, causal_mask(length, self.device), layers, positions)
        return hidden[0, -1]

    def decode(
        self, slots: list[int], codes: list[int], mel_positions: list[int], cache_positions: list[int]
    ) -> tuple[torch.Tensor, int]:
        """One step for the sequences in `slots` (each feeds codes[i] at mel_positions[i], written at
        cache_positions[i] of its row). -> ((B, d) hidden states in the order of `slots`, rows run)."""
        rows = max(slots) + 1
        taken = set(slots)
        others = [row for row in range(rows) if row not in taken and self.cache.in_use(row)]
        if others:  # they would be computed as free rows: position 0 of their cache overwritten
            raise ValueError(f"slots {others} are in use but not in this step (a partial step takes the lowest slots)")
        row_codes = [0] * rows
        row_mel_positions = [0] * rows
        row_cache_positions = [0] * rows  # free rows: position 0 of their own row
        for slot, code, mel_position, cache_position in zip(slots, codes, mel_positions, cache_positions, strict=True):
            row_codes[slot] = code
            row_mel_positions[slot] = mel_position
            row_cache_positions[slot] = cache_position
        codes_t = self._long(row_codes)
        mel_t = self._long(row_mel_positions)
        cache_t = self._long(row_cache_positions)
        lengths = cache_t + 1
        select = self._long(slots)
        # The graph pads the batch with the rows after it, free only when the batch reaches the span; a
        # partial step (see above) runs eagerly.
        if self.cuda_graphs is not None and rows == self.cache.span:
            hidden, rows_run = self.cuda_graphs.run(codes_t, mel_t, cache_t, lengths)
            return hidden[select], rows_run
        key_index = self._key_index[: max(cache_positions) + 1]
        hidden = decode_rows(self.model, self.cache, codes_t, mel_t, cache_t, lengths, key_index)
        return hidden[select], rows

    def _long(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
