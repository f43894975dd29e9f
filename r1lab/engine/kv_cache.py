"""A KV cache that writes into preallocated buffers instead of concatenating.

HF's ``DynamicCache`` grows each layer with ``torch.cat`` on every decoded token, copying the whole cache:
on a CPU that copy was 44% of decode time in our profile. This layer reserves room for ``capacity``
positions up front (the engine reserves prompt width + max new tokens, up to a cap) and writes each new token
in place, doubling the buffer if a long generation outgrows it; the model sees views of the filled part.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class BufferLayer(DynamicLayer):
    def __init__(self, capacity: int, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
        end = self.length + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:  # past the reservation: double, so growth stays O(T)
            self._grow(key_states, max(end, self.capacity, 2 * (self._k.shape[-2] if self._k is not None else 0)))
        self._k[..., self.length:end, :] = key_states
        self._v[..., self.length:end, :] = value_states
        self.length = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values

    def _grow(self, like: torch.Tensor, size: int) -> None:
        b, h, _, d = like.shape
        k, v = like.new_empty((b, h, size, d)), like.new_empty((b, h, size, d))
        if self._k is not None:
            k[..., :self.length, :] = self._k[..., :self.length, :]
            v[..., :self.length, :] = self._v[..., :self.length, :]
        self._k, self._v = k, v

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor, keep: int) -> None:
        """Copy rows ``src`` onto rows ``dst``, then keep the first ``keep`` rows (a view, no copy). Dropping
        finished rows this way copies only the rows that move, not the whole cache."""
        if self.length:
            if len(src):
                self._k[dst, :, :self.length] = self._k[src, :, :self.length]
                self._v[dst, :, :self.length] = self._v[src, :, :self.length]
            self._k, self._v = self._k[:keep], self._v[:keep]
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def cast(self, dtype: torch.dtype) -> None:
        """Hold K and V in ``dtype`` (a prefill under autocast can leave K in fp32: rotary embeddings promote it)."""
        if self.length and (self._k.dtype, self._v.dtype) != (dtype, dtype):
            self._k, self._v = self._k.to(dtype), self._v.to(dtype)
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]
            self.dtype = dtype

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]


def buffer_cache(capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose layers are :class:`BufferLayer` with room for ``capacity`` positions."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(BufferLayer, capacity)
    return cache


def compaction_moves(live: list[int]) -> tuple[list[int], list[int]]:
    """For a batch whose rows ``live`` (sorted) survive, the moves (src, dst) that pack them into the first
    ``len(live)`` rows: each live row beyond that fills a dead row below it.

    >>> compaction_moves([0, 2, 5])   # rows 1, 3, 4 finished: row 5 moves to row 1
    ([5], [1])
    """
    n = len(live)
    alive = set(live)
    holes = [i for i in range(n) if i not in alive]
    movers = [i for i in live if i >= n]
    return movers, holes
