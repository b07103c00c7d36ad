"""Token sequences to fixed-shape numpy rows: truncation, shifting, padding and packing.

Layout (notes/INTERFACES.md). A sequence of L tokens with a per-token target mask becomes L - 1
(input, target) pairs, so that ``logits[b, t]`` (computed from ``input_ids[b, :t+1]``) predicts
``targets[b, t]``::

    input_ids   = tokens[:-1]          [T] int32   (pad_id after the sequence)
    targets     = tokens[1:]           [T] int32   (0 after the sequence)
    loss_mask   = mask[1:]             [T] float32 (1 where targets[t] is trained on)
    positions   = 0, 1, ..., L-2       [T] int32   (restart at 0 in every packed segment; 0 on padding)
    segment_ids = 1 (or 1, 2, ... )    [T] int32   (0 on padding; tokens attend within their segment)

``T = max_length``: a sequence keeps at most ``max_length`` tokens (so the last column of an unpacked row
is always padding); rows are right-padded. Prompt rows for RL sampling are LEFT-padded to
``P = max_prompt_length`` so every prompt ends at the same column and generation appends after it.

Truncation (`truncate_prompt_completion`): the prompt keeps its last ``max_prompt_length`` tokens (cut
from the left, so the question right before the answer survives; a leading BOS may be lost), and never
more than ``max_length - 1`` so that at least one completion token fits; then the completion keeps its
first ``max_length - len(prompt)`` tokens (cut from the right; a cut completion loses its EOS). Whole
conversations (SFT ``messages``) and CLM text are cut from the right to ``max_length`` tokens, except that
with ``split_long=True`` (CLM) a long text is split into chunks of ``max_length`` tokens overlapping by
one token, so every (input, target) pair is trained on exactly once; each chunk is its own sequence with
positions from 0.

Packing (`pack`): greedy next-fit in the order given: a sequence goes into the current row if its L - 1
pairs fit in the remaining columns, else the row is closed and a new one started. A sequence is never
split across rows (CLM splits long texts into chunks beforehand, see above); each gets its own segment
id (1, 2, ...) and positions from 0, and its first token is never a target of the previous one.

Padding-free batches (`best_fit`, `pack_rows`): the sequences of one batch (a preference batch's chosen
and rejected, a KTO batch's completions), each already laid out as a right-padded row, are moved into as
few rows of the same width as best-fit-decreasing finds, each with its own segment id and a
``sequence_ids`` column naming its slot in the batch (chosen of pair j → 2j, rejected → 2j + 1). Per-example
columns (``label``, precomputed reference log-probs) stay as they are, one value per example.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence

import numpy as np

ROW_KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")
_DTYPES = {
    "input_ids": np.int32,
    "targets": np.int32,
    "loss_mask": np.float32,
    "positions": np.int32,
    "segment_ids": np.int32,
}


def truncate_prompt_completion(
    prompt: np.ndarray,
    completion: np.ndarray,
    completion_mask: np.ndarray,
    max_length: int,
    max_prompt_length: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Applies the truncation policy above. Returns (prompt, completion, completion_mask, truncated)."""
    keep_prompt = max_length - 1 if max_prompt_length is None else min(max_prompt_length, max_length - 1)
    p = prompt[-keep_prompt:] if len(prompt) > keep_prompt else prompt
    keep = max_length - len(p)
    c, cm = completion[:keep], completion_mask[:keep]
    return p, c, cm, len(p) < len(prompt) or len(c) < len(completion)


def split_chunks(ids: np.ndarray, mask: np.ndarray, max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Chunks of at most `max_length` tokens overlapping by one token (CLM long texts)."""
    if len(ids) <= max_length:
        return [(ids, mask)]
    step = max_length - 1
    out = []
    for start in range(0, len(ids) - 1, step):
        out.append((ids[start : start + max_length], mask[start : start + max_length]))
    return out


def empty_rows(n: int, T: int) -> dict[str, np.ndarray]:
    """All-padding rows [n, T] (segment 0, no targets)."""
    return {k: np.zeros((n, T), dt) for k, dt in _DTYPES.items()}


def _place(rows, r: int, col: int, ids: np.ndarray, mask: np.ndarray, segment: int, pad_id: int) -> int:
    n = len(ids) - 1
    if n <= 0:
        return col
    rows["input_ids"][r, col : col + n] = ids[:-1]
    rows["targets"][r, col : col + n] = ids[1:]
    rows["loss_mask"][r, col : col + n] = mask[1:]
    rows["positions"][r, col : col + n] = np.arange(n)
    rows["segment_ids"][r, col : col + n] = segment
    return col + n


def pad_rows(
    sequences: Sequence[tuple[np.ndarray, np.ndarray]], T: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """One right-padded row per (ids, mask) sequence: arrays [N, T]; sequences must have <= T + 1 tokens."""
    rows = empty_rows(len(sequences), T)
    rows["input_ids"][:] = pad_id
    for r, (ids, mask) in enumerate(sequences):
        if len(ids) - 1 > T:
            raise ValueError(f"sequence of {len(ids)} tokens does not fit T={T}")
        _place(rows, r, 0, ids, mask, 1, pad_id)
    return rows


def pack(
    sequences: Iterable[tuple[np.ndarray, np.ndarray]], T: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Greedy next-fit packing of (ids, mask) sequences into rows [R, T] with segment ids (see above)."""
    layout: list[list[int]] = []  # per row, indices of its sequences
    sequences = list(sequences)
    free = 0
    for i, (ids, _) in enumerate(sequences):
        n = len(ids) - 1
        if n > T:
            raise ValueError(f"sequence of {len(ids)} tokens does not fit T={T}")
        if n <= 0:
            continue
        if not layout or n > free:
            layout.append([])
            free = T
        layout[-1].append(i)
        free -= n
    rows = empty_rows(len(layout), T)
    rows["input_ids"][:] = pad_id
    for r, members in enumerate(layout):
        col = 0
        for s, i in enumerate(members):
            col = _place(rows, r, col, *sequences[i], segment=s + 1, pad_id=pad_id)
    return rows


def left_pad_prompts(prompts: Sequence[np.ndarray], P: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Prompt rows for sampling, LEFT-padded to [N, P]: prompt_ids, prompt_positions (0.. on the real
    tokens, 0 on padding), prompt_segment_ids (1 real, 0 padding). Longer prompts keep their last P."""
    n = len(prompts)
    ids = np.full((n, P), pad_id, np.int32)
    pos = np.zeros((n, P), np.int32)
    seg = np.zeros((n, P), np.int32)
    for r, p in enumerate(prompts):
        p = p[-P:]
        k = len(p)
        if k:
            ids[r, P - k :] = p
            pos[r, P - k :] = np.arange(k)
            seg[r, P - k :] = 1
    return {"prompt_ids": ids, "prompt_positions": pos, "prompt_segment_ids": seg}


def best_fit(lengths: Sequence[int], T: int) -> list[list[int]]:
    """Best-fit-decreasing: rows (lists of indices into `lengths`) of total length <= T each; each
    sequence, longest first, goes into the row with the least room that still fits it. Zero lengths are
    left out. Deterministic (ties keep index order). O(n log n): 8,192 sequences take milliseconds."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, row index)
    for i in order:
        n = lengths[i]
        if n > T:
            raise ValueError(f"sequence of {n} positions does not fit T={T}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, r = free.pop(j)
            rows[r].append(i)
        else:
            room, r = T, len(rows)
            rows.append([i])
        bisect.insort(free, (room - n, r))
    return rows


def rows_needed(lengths: Sequence[int], T: int) -> int:
    """How many rows of width T `best_fit` packs `lengths` into."""
    return len(best_fit(lengths, T))


def bucket_rows(needed: int, full: int, multiple: int = 1, num_buckets: int = 8) -> int:
    """The static row count for a packed batch that needs `needed` rows: rounded up to a step of
    ``full / num_buckets`` rows (a multiple of `multiple`), so that at most `num_buckets` shapes are ever
    compiled; never more than `full` (the unpacked row count) rounded up to `multiple`."""
    step = max(multiple, -(-full // num_buckets))
    step = -(-step // multiple) * multiple
    cap = -(-full // multiple) * multiple
    return min(max(-(-needed // step) * step, step), max(cap, step))


def whole_sequence_rows(rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Shifted rows [M, T] back to whole token sequences [M, T + 1] (the inputs, then the last target in
    the next column, positions and segment id continued), for models that read a sequence's last token
    (reward models). Returns (the five `ROW_KEYS`, targets and loss_mask zero; lengths [M])."""
    m, t = rows["input_ids"].shape
    n = np.sum(rows["segment_ids"] > 0, axis=1)
    out = empty_rows(m, t + 1)
    for k in ("input_ids", "positions", "segment_ids"):
        out[k][:, :t] = rows[k]
    real = np.nonzero(n > 0)[0]
    out["input_ids"][real, n[real]] = rows["targets"][real, n[real] - 1]
    out["positions"][real, n[real]] = n[real]
    out["segment_ids"][real, n[real]] = rows["segment_ids"][real, 0]
    return out, np.where(n > 0, n + 1, 0)


def pack_rows(
    seq_rows: dict[str, np.ndarray],
    lengths: np.ndarray,
    slots: np.ndarray,
    num_rows: int,
    pad_id: int = 0,
    row_offset: int | None = None,
) -> dict[str, np.ndarray]:
    """Moves M right-padded sequence rows into `num_rows` rows of the same width (padding-free).

    Args:
      seq_rows: the five `ROW_KEYS` arrays [M, T] (one sequence per row, as `pad_rows` makes them).
      lengths: [M] positions used by each row (its number of non-zero segment ids; 0 = empty, skipped).
      slots: [M] the `sequence_ids` value of each sequence.
      num_rows: R >= `rows_needed(lengths, T)`.

      row_offset: with a value, also return ``sequence_last`` [M] int32: the flat index (into the rows
        flattened to [R·T], the first row counted as `row_offset`) of each sequence's last position.

    Returns:
      The five keys [R, T] plus ``sequence_ids`` [R, T] int32 (0 on padding, whose loss_mask is 0).
    """
    T = seq_rows["input_ids"].shape[1]
    layout = best_fit([int(n) for n in lengths], T)
    if len(layout) > num_rows:
        raise ValueError(f"{len(layout)} rows needed, {num_rows} given")
    out = empty_rows(num_rows, T)
    out["input_ids"][:] = pad_id
    out["sequence_ids"] = np.zeros((num_rows, T), np.int32)
    last = np.zeros(len(lengths), np.int32)
    for r, members in enumerate(layout):
        col = 0
        for s, i in enumerate(members):
            n = int(lengths[i])
            for k in ROW_KEYS:
                out[k][r, col : col + n] = seq_rows[k][i, :n]
            out["segment_ids"][r, col : col + n] = s + 1
            out["sequence_ids"][r, col : col + n] = slots[i]
            col += n
            last[i] = ((row_offset or 0) + r) * T + col - 1
    if row_offset is not None:
        out["sequence_last"] = last
    return out


def pack_rollout(
    prompt_ids: np.ndarray,
    prompt_segment_ids: np.ndarray,
    tokens: np.ndarray,
    mask: np.ndarray,
    units: Sequence[np.ndarray],
    num_rows: int = 0,
    pad_id: int = 0,
) -> tuple[dict[str, np.ndarray], int]:
    """The layout of sampled rollouts packed padding-free for their forward passes (RL scoring, update).

    A rollout row is a left-padded prompt [P] (p real tokens) then a completion [N] (n real tokens); as model
    inputs it is the p + n - 1 tokens before the last (`sampling.scoring.sequence_inputs`), and completion
    token j is predicted at input position p - 1 + j. Each unit (an array of row indices: the rows that will
    go through an update together) is packed by `best_fit` into `rp` rows of width T = P + N - 1, unit u
    owning packed rows [u·rp, (u+1)·rp); rp is the most any unit needs, rounded by `bucket_rows` and at
    least `num_rows` (pass the last value back to keep shapes, hence compilations, from changing).

    Returns ({"packed_ids", "packed_positions", "packed_segment_ids": [U·rp, T] int32 (pad_id / 0 on
    padding), "packed_index": [R, N] int32 flat index into [U·rp · T] of the input position that predicts
    each completion token (0 where mask is 0)}, rp).
    """
    r, p = prompt_segment_ids.shape
    n = mask.shape[1]
    t = p + n - 1
    plen = np.sum(prompt_segment_ids != 0, axis=1).astype(np.int64)
    clen = np.sum(mask != 0, axis=1).astype(np.int64)
    length = np.where((clen > 0) & (plen > 0), plen + clen - 1, 0)
    layouts = [best_fit([int(length[i]) for i in u], t) for u in units]
    per_unit = max(len(u) for u in units)
    rp = max(bucket_rows(max(len(lay) for lay in layouts), per_unit), int(num_rows))
    seq = np.concatenate([prompt_ids, tokens], axis=1).astype(np.int32)  # [R, P + N]
    ids = np.full((len(units) * rp, t), pad_id, np.int32)
    pos = np.zeros_like(ids)
    seg = np.zeros_like(ids)
    index = np.zeros((r, n), np.int32)
    for u, (rows, layout) in enumerate(zip(units, layouts)):
        for q, members in enumerate(layout):
            row, col = u * rp + q, 0
            for s, k in enumerate(members):
                i, size = int(rows[k]), int(length[rows[k]])
                first = p - plen[i]  # the prompt's first real column
                ids[row, col : col + size] = seq[i, first : first + size]
                pos[row, col : col + size] = np.arange(size)
                seg[row, col : col + size] = s + 1
                index[i, : clen[i]] = row * t + col + plen[i] - 1 + np.arange(clen[i])
                col += size
    packed = {"packed_ids": ids, "packed_positions": pos, "packed_segment_ids": seg, "packed_index": index}
    return packed, rp


def head_width(share: float, length: int, multiple: int = 8) -> int:
    """Slots per row of a `head_index`: `share` of the row's `length`, rounded up to a multiple of
    `multiple`, at most `length`."""
    return min(length, max(multiple, -(-math.ceil(share * length) // multiple) * multiple))


def head_index(mask: np.ndarray, width: int) -> np.ndarray | None:
    """The positions of each row's loss mask, in order, at the front of `width` slots: the LM head
    projects only these (`jaxalign.trainers.objectives`).

        index[r, k] = the k-th position t of row r with mask[r, t] != 0,   T in unused slots

    Args:
      mask: [R, T] 0/1.
      width: K.

    Returns:
      [R, K] int32, or None when a row has more than K masked positions.
    """
    m = np.asarray(mask) != 0
    r, t = m.shape
    if r and int(m.sum(axis=1).max()) > width:
        return None
    index = np.full((r, width), t, np.int32)
    rows, cols = np.nonzero(m)
    rank = np.cumsum(m, axis=1)[rows, cols] - 1
    index[rows, rank] = cols
    return index


def with_head_index(batch: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray] | None:
    """`batch` plus a `<prefix>head_index` for each `<prefix>loss_mask` (one width for all of them:
    `head_width(share, T)`), or None when a row needs more slots than that."""
    masks = {k[: -len("loss_mask")]: v for k, v in batch.items() if k.endswith("loss_mask") and v.ndim == 2}
    if not masks:
        return None
    width = head_width(share, next(iter(masks.values())).shape[1])
    out = dict(batch)
    for prefix, mask in masks.items():
        index = head_index(mask, width)
        if index is None:
            return None
        out[prefix + "head_index"] = index
    return out
