"""A KV cache that writes into preallocated buffers instead of concatenating.

HF's ``DynamicCache`` grows each layer with ``torch.cat`` on every decoded token, copying the whole cache:
on a CPU that copy was 44% of decode time in our profile. This layer reserves room for ``capacity``
positions up front (the engine reserves prompt width + max new tokens, up to a cap) and writes each new token
in place, doubling the buffer if a long generation outgrows it; the model sees views of the filled part.

For continuous batching the buffers also keep spare rows: the live rows are a prefix view of them, finished rows
are dropped by moving live rows into their slots (:meth:`BufferLayer.move_rows`), and waiting rows are admitted
into the spare rows behind them (:meth:`BufferLayer.place`) with their prompt right-aligned at the current length.
Every row writes its next token in the same column; the columns in front of a row's prompt are masked (and zero,
so they stay finite), and columns no live row uses any more are dropped (:meth:`BufferLayer.shift_columns`).
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
        rows = max(b, self._rows()) if self._k is not None else b  # spare rows (continuous batching) are kept
        k, v = like.new_empty((rows, h, size, d)), like.new_empty((rows, h, size, d))
        if self._k is not None:
            k[:b, :, :self.length, :] = self._k[..., :self.length, :]
            v[:b, :, :self.length, :] = self._v[..., :self.length, :]
        self._k, self._v = k[:b], v[:b]
        self._full = (k, v)

    def _rows(self) -> int:
        """Rows the buffers hold (live rows are the first ``self._k.shape[0]``)."""
        full = getattr(self, "_full", None)
        return max(self._k.shape[0], full[0].shape[0] if full is not None else 0)

    def _views(self) -> None:
        self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def allocate(self, like_k: torch.Tensor, like_v: torch.Tensor, rows: int, length: int) -> None:
        """Start empty buffers shaped like ``like_k``/``like_v`` (.., H, .., D) with ``rows`` spare rows, no live row,
        ``length`` columns filled (by the rows :meth:`place` admits) and room for ``capacity`` or ``length``."""
        self.lazy_initialization(like_k, like_v)
        size = max(self.capacity, length)
        k = like_k.new_zeros((rows, like_k.shape[1], size, like_k.shape[3]))
        v = like_v.new_zeros((rows, like_v.shape[1], size, like_v.shape[3]))
        self._full, self._k, self._v = (k, v), k[:0], v[:0]
        self.length = length
        self._views()

    def place(self, at: int, keys: torch.Tensor, values: torch.Tensor, spare_rows: int = 0) -> None:
        """Admit rows ``at .. at + k`` (the live rows become the first ``at + k``) holding a prompt's K/V ``keys``,
        ``values`` (k, H, w, D), right-aligned so its last token sits in the last filled column (``w`` <= the
        filled length); the columns in front are zeroed. Past the spare rows the buffers grow to ``spare_rows``."""
        k, w = keys.shape[0], keys.shape[-2]
        if w > self.length:
            raise ValueError(f"a prompt of {w} positions does not fit {self.length} filled columns: shift first")
        end, start = at + k, self.length - w
        if getattr(self, "_full", None) is None:
            self._full = (self._k, self._v)
        if end > self._rows():
            old_k, old_v = self._k, self._v
            rows = max(end, spare_rows)
            full_k = old_k.new_zeros((rows, *old_k.shape[1:]))
            full_v = old_v.new_zeros((rows, *old_v.shape[1:]))
            full_k[:at], full_v[:at] = old_k[:at], old_v[:at]
            self._full = (full_k, full_v)
        full_k, full_v = self._full
        self._k, self._v = full_k[:end], full_v[:end]
        self._k[at:end, :, :start] = 0
        self._v[at:end, :, :start] = 0
        self._k[at:end, :, start:self.length] = keys.to(self._k.dtype)
        self._v[at:end, :, start:self.length] = values.to(self._v.dtype)
        self._views()

    def shift_columns(self, offset: int) -> None:
        """Move the live rows' filled columns ``offset`` to the right (zero columns in front) or ``-offset`` to the
        left (the first ``-offset`` columns dropped); the filled length changes by ``offset``."""
        if not offset:
            return
        keep = slice(max(0, -offset), self.length)
        k, v = self._k[:, :, keep].clone(), self._v[:, :, keep].clone()
        length = self.length + offset
        if length > self._k.shape[-2]:
            self._grow(self._k, max(length, 2 * self._k.shape[-2]))
        at = max(0, offset)
        self._k[:, :, at:length], self._v[:, :, at:length] = k, v
        if offset > 0:
            self._k[:, :, :offset] = 0
            self._v[:, :, :offset] = 0
        self.length = length
        self._views()

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._full = (self._k, self._v)
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
            self._full = (self._k, self._v)
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]
            self.dtype = dtype

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._k, self._v = self._k[indices], self._v[indices]
            self._full = (self._k, self._v)
            self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]


def buffer_cache(capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose layers are :class:`BufferLayer` with room for ``capacity`` positions."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(BufferLayer, capacity)
    return cache


def slot_cache(like: list[tuple[torch.Tensor, torch.Tensor]], rows: int, length: int, capacity: int) -> DynamicCache:
    """An empty cache for continuous batching: per layer, K/V shaped like ``like[i]`` with ``rows`` spare rows and
    ``length`` columns filled (rows come in by :meth:`BufferLayer.place`), room for ``capacity`` columns."""
    cache = buffer_cache(capacity)
    for k, v in like:
        layer = BufferLayer(capacity)
        layer.allocate(k, v, rows, length)
        cache.layers.append(layer)
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
