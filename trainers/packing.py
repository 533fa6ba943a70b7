"""Packing: several examples share one row of a batch, each attending only to itself.

A padded batch runs its padding through the model: a round mixes facts of 10-20 response tokens
with anchors of up to 100, so on the memory-formation experiment's first round 37% of the tokens a
padded batch of four ran were padding (a step took 2.7 s; packed, 1.7 s). Packed, the examples of a
batch are laid end to end in as few rows as fit `capacity` tokens each (a longer example gets a row
of its own), and a 4D additive attention mask lets each token see only its own example's tokens:
with the position ids each example would have alone, a packed row scores every example exactly as
one at a time. The rows are padded to the widest; a padding token sees only padding, never an
example (so no attention row is empty and no example reads padding).

Why a capacity: attention in a packed row is quadratic in the row's width, examples' cross pairs
included (masked, but computed). Rows of about a thousand tokens keep that a small part of the
step, and contexts of thousands of tokens still go one example per row, as a padded batch would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACK_TOKENS = 1024  # a row's token budget; see the module docstring
PADDING = -1  # the segment of padding tokens


def pack_groups(sizes: list[int], capacity: int) -> list[list[int]]:
    """The example indices of each row: first fit in the given order, each row's sizes summing to at
    most `capacity` (or to one example's size, when that alone is larger)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, size in enumerate(sizes):
        row = next((r for r, left in enumerate(room) if size <= left), None)
        if row is None:
            rows.append([index])
            room.append(max(capacity, size) - size)
        else:
            rows[row].append(index)
            room[row] -= size
    return rows


@dataclass
class Packed:
    """Token rows holding several examples' parts end to end."""

    ids: torch.Tensor  # (rows, width)
    positions: torch.Tensor  # (rows, width): each token's position in its own example
    segments: torch.Tensor  # (rows, width): the example each token belongs to, PADDING for padding

    def to(self, device) -> Packed:
        return Packed(self.ids.to(device), self.positions.to(device), self.segments.to(device))


def pack(groups: list[list[int]], parts: list[list[int]], starts: list[int], pad_id: int) -> Packed:
    """Lays example i's tokens `parts[i]` into the rows `groups` name, at positions counted from
    `starts[i]` (the tokens of the example that come before this part)."""
    width = max((sum(len(parts[i]) for i in group) for group in groups), default=0)
    shape = (len(groups), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, PADDING, dtype=torch.long)
    for row, group in enumerate(groups):
        at = 0
        for i in group:
            n = len(parts[i])
            ids[row, at : at + n] = torch.tensor(parts[i], dtype=torch.long)
            positions[row, at : at + n] = torch.arange(starts[i], starts[i] + n)
            segments[row, at : at + n] = i
            at += n
    return Packed(ids, positions, segments)


def attention_mask(queries: torch.Tensor, keys: torch.Tensor, causal: bool, dtype: torch.dtype,
                   offset: int = 0) -> torch.Tensor:
    """The additive 4D mask (rows, 1, queries, keys) from the queries' and keys' segments: 0 where a
    query may attend to a key of the same segment (when `causal`, a key no later than the query,
    the queries being the keys from index `offset` on), the dtype's minimum elsewhere."""
    allowed = queries[:, :, None] == keys[:, None, :]
    if causal:
        allowed &= torch.ones(queries.shape[1], keys.shape[1], dtype=torch.bool, device=queries.device).tril(offset)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=queries.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def segment_mean(values: torch.Tensor, segments: torch.Tensor, counted: torch.Tensor, count: int) -> torch.Tensor:
    """Per example (0..count-1), the mean of `values` over its `counted` tokens: (count,)."""
    which = segments[counted]
    sums = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, which, values[counted])
    return sums / torch.bincount(which, minlength=count).clamp(min=1).to(values.dtype)
