"""Greedy decoding of rows pooled from several teacher-forced batches, each row going on from its own
KV-cache columns (its prompt and the true tokens before its first divergence).

The rows' columns are copied into one preallocated cache as each teacher-forced batch ends; a row
writes each new column right after its own last one (no padding between a row's past and its new
tokens, so the cache is no wider than the longest sequence), and leaves the decoding batch the step
it has its tokens: the rows are decoded longest-remaining first, so the active rows are always a
prefix of the pool and shrinking the batch is a view, not a copy. Nothing is concatenated per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

# Rows decoded together, at most, in teacher-forced batches: on a CPU a one-token step of 48 rows
# costs a fraction of three steps of 16 (the weights are read once per step) ...
DECODE_POOL_BATCHES = 3
# ... as long as the pooled cache takes at most this share of the memory the process holds when
# decoding starts (resident memory on a CPU, the weights on an accelerator). A plain generate loop
# holds the same process and weights and one batch's cache; measured (benchmarks/README.md), pools
# of three batches keep a run's peak at 1.14-1.18x generate's, pools of four at 1.22x.
POOL_CACHE_SHARE = 0.15


@dataclass
class PoolRow:
    index: int  # the caller's sequence index
    kept: int  # cached columns: the prompt and the true tokens before the divergence
    remaining: int  # tokens left to generate
    first_token: int  # the divergent token, the first input


@dataclass
class _Step:
    """What every layer of the pooled cache needs to know about the current step."""

    rows: int  # active rows (a prefix of the pool)
    width: int  # columns the model sees as the past
    ends: Any  # [pool] the column each row writes next
    row_ids: Any  # [pool] 0..pool-1


def pool_rows(batch_size: int, column_bytes: int, columns: int, held_bytes: int) -> int:
    """How many rows to pool: up to DECODE_POOL_BATCHES batches, while their cache (`column_bytes`
    per row and column, over all layers) stays under POOL_CACHE_SHARE of `held_bytes`, the memory
    the process holds already; at least one batch."""
    by_memory = int(POOL_CACHE_SHARE * held_bytes) // max(1, column_bytes * columns)
    return max(batch_size, min(DECODE_POOL_BATCHES * batch_size, by_memory))


def resident_bytes() -> int:
    """This process's resident memory."""
    import psutil

    return psutil.Process().memory_info().rss


class DecodePool:
    """Rows waiting to be decoded, with their cached keys and values in preallocated buffers
    [rows, heads, columns, head dim] per layer (allocated on the first row, reused after)."""

    def __init__(self, columns: int, capacity: Callable[[int], int]):
        self.columns = columns
        self.capacity_for = capacity  # rows the pool may hold, given one row-column's bytes
        self.capacity = 0
        self.rows: list[PoolRow] = []
        self.buffers: list[tuple[Any, Any]] = []

    def room_for(self, incoming: int) -> bool:
        return not self.buffers or len(self.rows) + incoming <= self.capacity

    def add(self, layers: Sequence[tuple[Any, Any]], batch_row: int, row: PoolRow) -> None:
        """Copy `batch_row`'s first `row.kept` columns of each layer's (keys, values) into the pool."""
        if not self.buffers:
            self._allocate(layers)
        slot = len(self.rows)
        for (keys, values), (key_buffer, value_buffer) in zip(layers, self.buffers, strict=True):
            key_buffer[slot, :, :row.kept] = keys[batch_row, :, :row.kept]
            value_buffer[slot, :, :row.kept] = values[batch_row, :, :row.kept]
        self.rows.append(row)

    def _allocate(self, layers: Sequence[tuple[Any, Any]]) -> None:
        column_bytes = sum(k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size()
                           for k, v in layers)
        self.capacity = self.capacity_for(column_bytes)
        # zeros, not empty: a masked column still enters attention as 0 x value, and 0 x NaN is NaN
        self.buffers = [tuple(t.new_zeros((self.capacity, t.shape[1], self.columns, t.shape[3])) for t in (k, v))
                        for k, v in layers]

    def decode(self, step: Callable[[Any, Any, Any, Any], tuple[Any, Any]]) -> dict[int, tuple[list[int], list[float]]]:
        """Greedy tokens of every pooled row, with the top-1 minus top-2 log-prob margin at each
        (by the caller's index); empties the pool. `step(input_ids, attention_mask, position_ids,
        cache)` runs the model on one token per active row and returns the argmax token of each
        and its margin."""
        import torch

        if not self.rows:
            return {}
        order = sorted(range(len(self.rows)), key=lambda i: self.rows[i].remaining, reverse=True)
        self._permute(order)
        rows = [self.rows[i] for i in order]
        state = _Step(rows=len(rows), width=max(r.kept for r in rows), ends=torch.tensor([r.kept for r in rows]),
                      row_ids=torch.arange(len(rows)))
        cache = _pooled_cache(self.buffers, state)
        current = torch.tensor([r.first_token for r in rows])
        made: list[list[int]] = [[] for _ in rows]
        margins: list[list[float]] = [[] for _ in rows]
        for number in range(rows[0].remaining):
            state.rows = sum(r.remaining > number for r in rows)
            current, ends = current[:state.rows], state.ends[:state.rows]
            state.width = int(ends.max())
            for layer in cache.layers:
                layer.show()
            # Each row sees its own columns and the one it is writing now.
            mask = (torch.arange(state.width + 1)[None] <= ends[:, None]).long()
            current, margin = step(current[:, None], mask, ends[:, None].clone(), cache)
            for k, (token, gap) in enumerate(zip(current.tolist(), margin.tolist(), strict=True)):
                made[k].append(token)
                margins[k].append(gap)
            state.ends[:state.rows] += 1
        self.rows = []
        return {r.index: (m, g) for r, m, g in zip(rows, made, margins, strict=True)}

    def _permute(self, order: list[int]) -> None:
        """Put the pooled rows in `order` in place, one layer's copy at a time."""
        import torch

        if order == list(range(len(order))):
            return
        index = torch.tensor(order)
        for buffers in self.buffers:
            for buffer in buffers:
                buffer[:len(order)] = buffer.index_select(0, index)


def _pooled_cache(buffers: list[tuple[Any, Any]], state: _Step) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    layer = _pool_layer_class()
    cache.layers = [layer(keys, values, state) for keys, values in buffers]
    return cache


@cache
def _pool_layer_class() -> type:
    """The layer class, made once: transformers is imported only when decoding."""
    from transformers.cache_utils import DynamicLayer

    class PoolLayer(DynamicLayer):
        """A DynamicLayer over a pool buffer: the model sees `state.width` columns of the active
        rows, and each row's new keys and values go to its own next column."""

        def __init__(self, keys: Any, values: Any, state: _Step):
            super().__init__()
            self.key_buffer, self.value_buffer, self.state = keys, values, state
            self.is_initialized = True
            self.device = keys.device
            self.show()

        def show(self) -> None:
            n, width = self.state.rows, self.state.width
            self.keys = self.key_buffer[:n, :, :width]
            self.values = self.value_buffer[:n, :, :width]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n, width = self.state.rows, self.state.width
            rows, columns = self.state.row_ids[:n], self.state.ends[:n]
            self.key_buffer[rows, :, columns] = key_states[:, :, 0]
            self.value_buffer[rows, :, columns] = value_states[:, :, 0]
            self.keys = self.key_buffer[:n, :, :width + 1]
            self.values = self.value_buffer[:n, :, :width + 1]
            return self.keys, self.values

    return PoolLayer


