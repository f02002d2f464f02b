"""The paged KV cache: fixed-size blocks of token slots, handed to rows as they grow, shared by prefix.

Device side (`PagedKV`): per layer one key and one value tensor of `num_blocks * block_size` token
slots, and a block table per engine slot (row) saying which blocks hold its positions. A token at
position p of a row lives in slot `table[p // block_size] * block_size + p % block_size`, so rows of
any length share one pool and 256 rows of mixed lengths fit where 256 full-length rows would not.
Block 0 is never handed out: padding rows of a CUDA-graph batch write there harmlessly.

Host side (`BlockPool`): free blocks, reference counts, and the prefix index. A full block is
registered under a hash of everything before and in it (the adapter included); a new prompt that
starts with registered blocks shares them instead of computing them again (a chat bridge resends
the channel's history with every request). Blocks nobody uses stay registered until their room is
needed (least recently used first).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import torch


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(1, num_blocks))  # block 0: the padding rows' scratch block
        self._refs = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # registered blocks with no user, oldest first
        self.reserved = 0  # blocks promised to admitted rows but not yet taken
        self.hits = 0  # prefix blocks reused (metrics, benchmarks)

    @property
    def capacity(self) -> int:
        return self.num_blocks - 1

    def available(self) -> int:
        """Blocks that can be taken now (free or idle-registered), less those promised to rows."""
        return len(self._free) + len(self._idle) - self.reserved

    def take(self) -> int:
        if self._free:
            block = self._free.popleft()
        elif self._idle:
            block, _ = self._idle.popitem(last=False)
            del self._by_hash[self._hash_of[block]]
            self._hash_of[block] = None
        else:
            raise RuntimeError("the KV cache has no free block (admission should have prevented this)")
        self._refs[block] = 1
        return block

    def release(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if self._hash_of[block] is not None:
                self._idle[block] = None
            else:
                self._free.append(block)

    def lookup(self, key: int) -> int | None:
        return self._by_hash.get(key)

    def share(self, block: int) -> None:
        if self._refs[block] == 0:
            self._idle.pop(block, None)
        self._refs[block] += 1
        self.hits += 1

    def register(self, block: int, key: int) -> None:
        """Mark a full block's content as reusable under `key` (the first registration wins)."""
        if self._hash_of[block] is None and key not in self._by_hash:
            self._by_hash[key] = block
            self._hash_of[block] = key


def block_keys(ids: list[int], block_size: int, salt: int, count: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of `ids` (each covers everything before it, and `salt`)."""
    keys, key = [], hash(("fizzbot-kv", salt))
    full = len(ids) // block_size if count is None else count
    for i in range(full):
        key = hash((key, tuple(ids[i * block_size:(i + 1) * block_size])))
        keys.append(key)
    return keys


class PagedKV:
    """The device tensors: per layer keys and values [slots, kv_heads, head_dim], and the block tables."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 rows: int, max_blocks_per_row: int, dtype: torch.dtype, device: torch.device):
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_blocks * block_size, kv_heads, head_dim)
        # Uninitialised but block 0: a slot is written before attention uses it.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        for tensor in self.keys + self.values:
            tensor[:block_size].zero_()  # block 0: what padding positions read, never NaN
        # One row per engine slot plus the padding slot; unused entries point at block 0.
        self.block_table = torch.zeros(rows, max_blocks_per_row, dtype=torch.int32, device=device)

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def slots_for(self, table_rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cache slots of `positions` [n, L] for rows whose block tables are `table_rows` [n, M]."""
        blocks = table_rows.gather(1, (positions // self.block_size).clamp(max=table_rows.shape[1] - 1).long())
        return blocks.long() * self.block_size + positions % self.block_size
