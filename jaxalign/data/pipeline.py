"""The data API the trainers use: `build_dataset` once, then a `BatchIterator` per training/eval loop.

    ds = build_dataset("data/train.jsonl", kind="preference", tokenizer=tok, max_length=512,
                       max_prompt_length=256)
    it = BatchIterator(ds, global_batch_size=64, seed=0,
                       process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)            # this host's [64 / process_count, ...] numpy arrays
    state = it.get_state()      # {"epoch": e, "position": p, ...}: store it in the checkpoint
    it.set_state(state)         # ... and resume exactly there

`kind` and the batch each yields (keys as notes/INTERFACES.md; layout in `batching`):
  clm, sft    input_ids, targets, loss_mask, positions, segment_ids          [B, T]
  preference  the same five keys prefixed ``chosen_`` and ``rejected_``       [B, T]
  kto         the five keys [B, T] + ``label`` [B] float32 (1 desirable, 0 undesirable)
  prompt      prompt_ids, prompt_positions, prompt_segment_ids [B, P] (LEFT-padded) + ``answer``: a
              list of B strings kept on the host for reward functions ("" when the row has none)
with ``T = max_length`` and ``P = max_prompt_length``. Everything is tokenized once, up front, into
arrays [N, ...] (the datasets this is for fit in host memory); ``packing=True`` with clm packs the
documents into N rows before any shuffling, so an "example" is then a packed row.

Padding-free SFT, preference and KTO batches (``packing=True`` for those kinds): examples are stored and
shuffled as above, and each batch's sequences are then packed into the fewest rows of width T that
best-fit-decreasing finds, rounded up to one of at most 8 static row counts (`batching.bucket_rows`, a
multiple of ``row_multiple``, the batch shards per host; the same count on every host, computed from the
lengths of the whole global batch). Such a batch holds the five row keys and ``sequence_ids`` [R, T]
(chosen of global pair j → slot 2j, rejected → 2j + 1; a KTO or SFT example j → slot j), ``example_mask`` [B]
(1 for a real example) and the per-example columns (``label``, ``ref_*_logps``) [B].

Order and hosts. Epoch ``e`` visits the examples in ``np.random.default_rng([seed, e]).permutation(N)``
order (or 0..N-1 with ``shuffle=False``). Training iterators (``repeat=True``) read that stream epoch
after epoch without dropping anything: a global batch may straddle two epochs. Each global batch of
``G`` examples is split into ``process_count`` contiguous slices of ``G / process_count``; host ``i``
yields slice ``i``, so the hosts' batches concatenated in process order are exactly the single-host
batch. The state is (epoch, position of the next example in that epoch's order); it is the same on
every host.

Evaluation (``repeat=False``): one pass, then StopIteration. The last, partial global batch is filled
with padding rows (all zeros: segment 0, no targets, label 0, an empty prompt) so shapes never change,
and every batch of such an iterator carries ``weight`` [B] float32: 1 for a real example, 0 for
padding. Per-token losses ignore padding rows by their zero loss_mask; per-sequence means (DPO, KTO,
rewards) must weight by ``weight``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from jaxalign.data import batching, formats, sources, templates
from jaxalign.errors import DataError

KINDS = tuple(formats.KIND_FORMATS)
_PROGRESS_EVERY = 5000


@dataclasses.dataclass
class TokenizedDataset:
    """Tokenized, padded examples of one kind.

    Attributes:
      kind: "clm" | "sft" | "preference" | "kto" | "prompt".
      arrays: name -> [N, ...] numpy arrays (the batch keys).
      host: name -> [N] object arrays kept on the host (``answer`` for prompts).
      max_length: T; max_prompt_length: P (prompt kind) or the prompt truncation length.
      num_truncated: how many examples lost tokens to truncation.
      source: the `sources.RowSource` the rows came from (``source[i]`` is raw row i, unpacked kinds).
    """

    kind: str
    arrays: dict[str, np.ndarray]
    host: dict[str, np.ndarray]
    max_length: int
    max_prompt_length: int | None
    num_truncated: int = 0
    source: Any = None
    padding_free: bool = False
    whole_sequences: bool = False  # padding-free rows of whole sequences (reward models read the EOS)

    @property
    def packed_width(self) -> int:
        """Row width of padding-free batches: T, or T + 1 for whole sequences."""
        return self.max_length + int(self.whole_sequences)

    def packed_lengths(self, indices: np.ndarray) -> np.ndarray:
        """[len(indices)·k] positions each sequence takes in padding-free rows, example-major."""
        n = self.sequence_lengths(indices).reshape(-1)
        return np.where(n > 0, n + 1, 0) if self.whole_sequences else n

    @property
    def sequence_prefixes(self) -> tuple[str, ...]:
        """The row-key prefixes of one example's sequences: ("chosen_", "rejected_") or ("",)."""
        return ("chosen_", "rejected_") if self.kind == "preference" else ("",)

    def sequence_lengths(self, indices: np.ndarray) -> np.ndarray:
        """[len(indices), k] positions used by each sequence of the examples (0 for index -1)."""
        indices = np.asarray(indices, np.int64)
        safe = np.where(indices >= 0, indices, 0)
        out = np.stack([self._lengths[p][safe] for p in self.sequence_prefixes], axis=1)
        out[indices < 0] = 0
        return out

    @functools.cached_property
    def _lengths(self) -> dict[str, np.ndarray]:
        return {
            p: np.sum(self.arrays[p + "segment_ids"] > 0, axis=1).astype(np.int64)
            for p in self.sequence_prefixes
        }

    def pack_batch(
        self,
        batch: dict[str, Any],
        indices: np.ndarray,
        offset: int,
        num_rows: int,
        pad_id: int = 0,
        row_offset: int = 0,
    ) -> dict[str, Any]:
        """A `take` batch of examples `indices` made padding-free (see module docstring); `offset` is the
        global index of its first example, `row_offset` the global index of its first row."""
        prefixes = self.sequence_prefixes
        k = len(prefixes)
        seq_rows = {
            key: np.stack([batch.pop(p + key) for p in prefixes], axis=1).reshape(-1, self.max_length)
            for key in batching.ROW_KEYS
        }  # [B·k, T], example-major
        lengths = self.packed_lengths(indices)  # [B·k], example-major
        if self.whole_sequences:
            seq_rows, _ = batching.whole_sequence_rows(seq_rows)
        slots = (k * offset + np.arange(len(lengths))).astype(np.int32)
        batch.update(
            batching.pack_rows(
                seq_rows,
                lengths,
                slots,
                num_rows,
                pad_id,
                row_offset=row_offset if self.whole_sequences else None,
            )
        )
        return batch

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def content_digest(self) -> bytes:
        """sha256 of what the examples' tokens are (every row array except precomputed ``ref_*``)."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            if name.startswith("ref_"):
                continue
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
        return h.digest()

    @property
    def num_examples(self) -> int:
        return len(self)

    def take(self, indices: np.ndarray) -> dict[str, Any]:
        """The batch for `indices` [B]; an index of -1 gives a padding row (all zeros, answer "")."""
        indices = np.asarray(indices, np.int64)
        valid = indices >= 0
        safe = np.where(valid, indices, 0)
        batch: dict[str, Any] = {}
        for k, v in self.arrays.items():
            x = v[safe]
            if not valid.all():
                x[~valid] = 0
            batch[k] = x
        for k, v in self.host.items():
            batch[k] = [v[i] if ok else "" for i, ok in zip(safe, valid)]
        if self.padding_free:
            batch["example_mask"] = valid.astype(np.float32)
        return batch


LAZY_KINDS = ("sft", "preference", "kto")
LAZY_MIN_ROWS = 50_000  # build_dataset(lazy=None): datasets this large are tokenized batch by batch
_LAZY_CACHE = 8192  # encoded examples a LazyTokenizedDataset keeps (a few global batches' worth)


@dataclasses.dataclass
class LazyTokenizedDataset(TokenizedDataset):
    """A `TokenizedDataset` whose examples are tokenized when a batch first asks for them.

    Training starts after the rows are read and checked, whatever their number (up-front tokenization
    of a million rows takes minutes); each batch then tokenizes its own examples (the global batch's, for
    the padding-free row count), which the `Prefetcher` overlaps with the device step. Batches are
    identical to those of the eager dataset built from the same rows (tested). ``arrays`` holds only the
    per-example columns (``label``, precomputed ``ref_*``); ``num_truncated`` is not known up front (0).
    A chat template that fails on some row raises its `DataError` when that row's batch is built.
    """

    examples: list | None = None
    encode: Any = None
    pad_id: int = 0
    digest_settings: bytes = b""

    def __post_init__(self):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.examples)

    def _encoded(self, i: int):
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        try:
            hit = self.encode(self.examples[i])
        except ValueError as e:
            where = self.source.locate(i) if self.source is not None else f"example {i + 1}"
            raise DataError(f"{where}: {e}") from None
        with self._lock:
            self._cache[i] = hit
            if len(self._cache) > _LAZY_CACHE:
                self._cache.popitem(last=False)
        return hit

    def sequence_lengths(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        out = np.zeros((len(indices), len(self.sequence_prefixes)), np.int64)
        for r, i in enumerate(indices):
            if i >= 0:
                out[r] = [max(len(ids) - 1, 0) for ids, _ in self._encoded(int(i))[0]]
        return out

    def take(self, indices: np.ndarray) -> dict[str, Any]:
        indices = np.asarray(indices, np.int64)
        valid = indices >= 0
        safe = np.where(valid, indices, 0)
        batch: dict[str, Any] = _example_arrays(
            self.kind, [self._encoded(int(i)) for i in safe], self.max_length, self.pad_id
        )
        batch.update({k: v[safe] for k, v in self.arrays.items()})
        if not valid.all():
            for x in batch.values():
                x[~valid] = 0
        if self.padding_free:
            batch["example_mask"] = valid.astype(np.float32)
        return batch

    def content_digest(self) -> bytes:
        h = hashlib.sha256(self.digest_settings)
        for ex in self.examples:
            h.update(json.dumps(ex, sort_keys=True, default=str).encode())
        return h.digest()


def _tokenize_rows(source, adapt, encode, name: str) -> list:
    n = len(source)
    out = []
    start = time.time()
    for i in range(n):
        where = source.locate(i)
        example = adapt(source[i], where)
        try:
            out.append(encode(example))
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if n >= _PROGRESS_EVERY and (i + 1) % _PROGRESS_EVERY == 0:
            logging.info("tokenizing %s: %d/%d rows (%.0fs)", name, i + 1, n, time.time() - start)
    return out


def _encoder(kind: str, tokenizer, T: int, P: int | None, assistant_only_loss: bool):
    """`encode(example)` for one adapted example: clm/sft -> (sequences, cut); preference/kto ->
    (sequences, cut, label), each sequence an (ids, target mask) pair before padding."""
    if kind in ("clm", "sft"):

        def encode(ex):
            if "prompt" in ex:  # prompt/completion: left-truncate the prompt, then the completion
                p, c, cm = templates.encode_prompt_completion(tokenizer, ex["prompt"], ex["completion"])
                p, c, cm, cut = batching.truncate_prompt_completion(p, c, cm, T, P)
                pm = np.full(len(p), 0 if assistant_only_loss else 1, np.int32)
                return [(np.concatenate([p, c]), np.concatenate([pm, cm]))], cut
            ids, mask = templates.encode_example(tokenizer, ex, assistant_only_loss)
            if kind == "clm":
                return batching.split_chunks(ids, mask, T), False
            return [(ids[:T], mask[:T])], len(ids) > T

        return encode
    fields = ("chosen", "rejected") if kind == "preference" else ("completion",)

    def encode(ex):
        out, cut_any = [], False
        for f in fields:
            p, c, cm = templates.encode_prompt_completion(tokenizer, ex["prompt"], ex[f])
            p, c, cm, cut = batching.truncate_prompt_completion(p, c, cm, T, P)
            out.append((np.concatenate([p, c]), np.concatenate([np.zeros(len(p), np.int32), cm])))
            cut_any |= cut
        return out, cut_any, ex.get("label")

    return encode


def _example_arrays(kind: str, encoded: list, T: int, pad_id: int) -> dict[str, np.ndarray]:
    """Padded row arrays [N, T] of encoded sft / preference / kto examples (one row per sequence)."""
    if kind == "sft":
        return batching.pad_rows([seqs[0] for seqs, _ in encoded], T, pad_id)
    if kind == "preference":
        arrays = {}
        for j, f in enumerate(("chosen", "rejected")):
            rows = batching.pad_rows([e[0][j] for e in encoded], T, pad_id)
            arrays.update({f"{f}_{k}": v for k, v in rows.items()})
        return arrays
    arrays = batching.pad_rows([e[0][0] for e in encoded], T, pad_id)
    arrays["label"] = np.asarray([float(e[2]) for e in encoded], np.float32)
    return arrays


def _digest_settings(tokenizer, kind, T, P, assistant_only_loss) -> bytes:
    """What, besides the rows, decides a lazy dataset's tokens: the tokenizer (its vocabulary and merges,
    special tokens and chat template) and the tokenization settings."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {
        "class": type(tokenizer).__name__,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "kind": kind,
        "T": T,
        "P": P,
        "assistant_only_loss": assistant_only_loss,
    }
    return hashlib.sha256(vocab.encode() + json.dumps(extra, sort_keys=True, default=str).encode()).digest()


def build_dataset(
    path: Any,
    *,
    kind: str,
    tokenizer,
    format: str = "auto",
    split: str = "train",
    max_length: int,
    max_prompt_length: int | None = None,
    assistant_only_loss: bool = True,
    packing: bool = False,
    data_dir: str | None = None,
    whole_sequences: bool = False,
    lazy: bool | None = None,
) -> TokenizedDataset:
    """Loads, adapts, tokenizes and pads a dataset (see the module docstring).

    Args:
      path: a file, directory, list of files, hub name, ``"tfds:name"``, list of dict rows or a
        ``datasets.Dataset`` (see `sources`).
      kind: "clm" | "sft" | "preference" | "kto" | "prompt".
      tokenizer: a transformers tokenizer (chat template needed for conversational rows).
      format: "auto" or a format name from `formats`.
      split: which split of a directory / hub / TFDS dataset.
      max_length: T, tokens per sequence (prompt + completion) and the batch width.
      max_prompt_length: prompt tokens kept (from the right); required for kind="prompt", where it is P.
      assistant_only_loss: SFT targets only the assistant turns (and completions, not prompts); False
        trains on the whole conversation.
      packing: pack clm documents into rows with segment ids; make sft/preference/kto batches
        padding-free (see module docstring).
      whole_sequences: padding-free rows hold whole sequences (width T + 1, the last token included) and
        batches carry ``sequence_last`` (reward models).
      data_dir: TFDS data directory.
      lazy: tokenize each example when a batch first needs it (`LazyTokenizedDataset`) instead of all
        of them up front; None = lazy for sft/preference/kto datasets of at least `LAZY_MIN_ROWS` rows.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    if packing and kind not in ("clm", "sft", "preference", "kto"):
        raise ValueError(f"packing applies to kinds clm, sft, preference and kto, not {kind!r}")
    if kind == "prompt" and not max_prompt_length:
        raise ValueError("kind='prompt' needs max_prompt_length (the width P of the left-padded prompts)")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    source = sources.load_rows(path, split, data_dir=data_dir)
    if len(source) == 0:
        raise DataError(f"{source.name}: no rows")
    adapt = formats.make_adapter(kind, format)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    T, P = max_length, max_prompt_length
    truncated = 0
    host: dict[str, np.ndarray] = {}

    if lazy is None:
        lazy = len(source) >= LAZY_MIN_ROWS and kind in LAZY_KINDS and not (packing and kind == "clm")
    if lazy:
        if kind not in LAZY_KINDS:
            raise ValueError(f"lazy tokenization applies to kinds {LAZY_KINDS}, not {kind!r}")
        encode = _encoder(kind, tokenizer, T, P, assistant_only_loss)
        if getattr(source, "kind", None) == kind and hasattr(source, "rows"):  # `data.read` checked them
            adapted = list(source.rows)
        else:
            adapted = [adapt(source[i], source.locate(i)) for i in range(len(source))]
        arrays = {}
        if kind == "kto":
            arrays["label"] = np.asarray([float(ex.get("label")) for ex in adapted], np.float32)
        return LazyTokenizedDataset(
            kind,
            arrays,
            host,
            T,
            P,
            0,
            source,
            padding_free=packing and kind in ("sft", "preference", "kto"),
            whole_sequences=whole_sequences,
            examples=adapted,
            encode=encode,
            pad_id=pad_id,
            digest_settings=_digest_settings(tokenizer, kind, T, P, assistant_only_loss),
        )
    if kind in ("clm", "sft"):
        encoded = _tokenize_rows(
            source, adapt, _encoder(kind, tokenizer, T, P, assistant_only_loss), source.name
        )
        truncated = sum(cut for _, cut in encoded)
        seqs = [s for chunks, _ in encoded for s in chunks]
        static_pack = packing and kind == "clm"  # SFT packs each batch instead (padding-free batches)
        arrays = batching.pack(seqs, T, pad_id) if static_pack else batching.pad_rows(seqs, T, pad_id)
        if static_pack or kind == "clm":
            source = None  # rows no longer map 1:1 to source rows
    elif kind in ("preference", "kto"):
        encoded = _tokenize_rows(
            source, adapt, _encoder(kind, tokenizer, T, P, assistant_only_loss), source.name
        )
        truncated = sum(cut for _, cut, _ in encoded)
        arrays = _example_arrays(kind, encoded, T, pad_id)
    else:  # prompt

        def encode(ex):
            p = templates.encode_prompt(tokenizer, ex["prompt"])
            ans = ex.get("answer")
            return p, len(p) > P, "" if ans is None else str(ans), ex["prompt"]

        encoded = _tokenize_rows(source, adapt, encode, source.name)
        truncated = sum(e[1] for e in encoded)
        arrays = batching.left_pad_prompts([e[0] for e in encoded], P, pad_id)
        host["answer"] = np.array([e[2] for e in encoded], dtype=object)
        # The prompt itself and where it is (an environment starts its episode from the row, and its
        # errors name the row).
        host["prompt"] = np.empty(len(encoded), dtype=object)
        host["prompt"][:] = [e[3] for e in encoded]
        host["where"] = np.array([source.locate(i) for i in range(len(encoded))], dtype=object)
    if truncated:
        logging.info(
            "%s: %d of %d examples truncated (max_length=%d, max_prompt_length=%s)",
            getattr(source, "name", kind),
            truncated,
            len(encoded),
            T,
            P,
        )
    return TokenizedDataset(
        kind,
        arrays,
        host,
        T,
        P,
        int(truncated),
        source,
        padding_free=packing and kind in ("sft", "preference", "kto"),
        whole_sequences=whole_sequences,
    )


def bucket_width(needed: int, T: int, num_buckets: int) -> int:
    """The narrowest of T, ceil(T/2), ..., ceil(T/2^(num_buckets-1)) that is >= needed."""
    widths = sorted({-(-T // 2**k) for k in range(num_buckets)})
    return next(w for w in widths if w >= needed) if needed <= T else T


class BatchIterator:
    """Deterministic, resumable, host-sliced batches from a `TokenizedDataset` (see module docstring).

    Args:
      dataset: a `TokenizedDataset`.
      global_batch_size: G, examples per step over all hosts; divisible by `process_count`.
      seed: shuffling seed (epoch e uses ``default_rng([seed, e])``).
      process_index, process_count: this host and the number of hosts.
      shuffle: shuffle each epoch.
      repeat: True for training (endless); False for one evaluation pass with a ``weight`` key.
      row_multiple: padding-free batches have a multiple of this many rows per host (the batch shards
        per host).
      pad_id: the padding token of padding-free rows.
      length_buckets: padded (not padding-free) sft/preference/kto batches are cut to the narrowest of
        the widths T, T/2, ..., T/2^(length_buckets-1) that keeps every sequence of the global batch
        and one padding column (the same on every host); 1 = always T. Each width compiles once.
    """

    def __init__(
        self,
        dataset: TokenizedDataset,
        global_batch_size: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        repeat: bool = True,
        row_multiple: int = 1,
        pad_id: int = 0,
        length_buckets: int = 1,
    ):
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} must be a positive multiple of "
                f"process_count={process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if len(dataset) == 0:
            raise ValueError("empty dataset")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.per_host_batch_size = global_batch_size // process_count
        self.seed, self.shuffle, self.repeat = int(seed), shuffle, repeat
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = -1, None
        self.row_multiple, self.pad_id = int(row_multiple), int(pad_id)
        self.length_buckets = max(int(length_buckets), 1)

    @property
    def num_examples(self) -> int:
        return len(self.dataset)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per pass (the last one partial and padded when ``repeat=False``)."""
        n, g = self.num_examples, self.global_batch_size
        return n // g if self.repeat else -(-n // g)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = self.num_examples
            self._order = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def _global_indices(self) -> np.ndarray | None:
        n, g = self.num_examples, self.global_batch_size
        if not self.repeat:
            if self.position >= n:
                return None
            idx = self._epoch_order(0)[self.position : self.position + g]
            self.position += len(idx)
            return np.concatenate([idx, np.full(g - len(idx), -1, np.int64)])
        parts, need = [], g
        while need:
            order = self._epoch_order(self.epoch)
            take = order[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= n:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts)

    def next(self) -> dict[str, Any]:
        idx = self._global_indices()
        if idx is None:
            raise StopIteration
        b = self.per_host_batch_size
        mine = idx[self.process_index * b : (self.process_index + 1) * b]
        batch = self.dataset.take(mine)
        if not self.repeat:
            batch["weight"] = (mine >= 0).astype(np.float32)
        if self.length_buckets > 1 and not self.dataset.padding_free and self.dataset.kind in LAZY_KINDS:
            width = bucket_width(
                int(self.dataset.sequence_lengths(idx).max(initial=0)) + 1,
                self.dataset.max_length,
                self.length_buckets,
            )
            batch = {
                k: v[:, :width] if any(k.endswith(r) for r in batching.ROW_KEYS) else v
                for k, v in batch.items()
            }
        if self.dataset.padding_free:
            ds = self.dataset
            needed = max(
                batching.rows_needed(ds.packed_lengths(idx[h * b : (h + 1) * b]), ds.packed_width)
                for h in range(self.process_count)
            )
            rows = batching.bucket_rows(needed, b * len(ds.sequence_prefixes), self.row_multiple)
            batch = ds.pack_batch(
                batch, mine, self.process_index * b, rows, self.pad_id, row_offset=self.process_index * rows
            )
        return batch

    __next__ = next

    def __iter__(self):
        return self

    def get_state(self) -> dict[str, int]:
        """JSON-serializable position: ``{"epoch", "position", "seed", "num_examples"}``."""
        return {
            "epoch": int(self.epoch),
            "position": int(self.position),
            "seed": self.seed,
            "num_examples": self.num_examples,
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Resumes at `state` from `get_state`; the seed and dataset size must match."""
        if int(state["seed"]) != self.seed or int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"data state {state} is for another dataset or seed (this one: seed={self.seed},"
                f" num_examples={self.num_examples})"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class Prefetcher:
    """Prepares the next batches of an iterator in a background thread while the device runs.

    `next()` returns exactly the batches `iterator.next()` would, in order (one thread calls it), up to
    `depth` of them made ahead; `get_state()` is the iterator's state after the last batch handed out
    (not after the ones made ahead), so a checkpoint resumes at the right example. `set_state` stops the
    thread, moves the iterator and starts again on the next `next()`. An exception raised while making a
    batch (StopIteration, a `DataError` of a lazily tokenized row) is raised by the `next()` that would
    have returned that batch. Other attributes are the iterator's.
    """

    def __init__(self, iterator, depth: int = 2):
        self.iterator, self.depth = iterator, int(depth)
        self._state = iterator.get_state()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def _run(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = (self.iterator.next(), self.iterator.get_state(), None)
            except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised there)
                item = (None, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=max(self.depth, 1))
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._stop), daemon=True, name="jaxalign-prefetch"
        )
        self._thread.start()

    def close(self) -> None:
        """Stops the background thread (the iterator is then ahead of `get_state()`: call `set_state`
        before using it again)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def next(self) -> dict[str, Any]:
        if self._thread is None:
            self._start()
        batch, state, error = self._queue.get()
        if error is not None:
            self._thread.join()
            self._thread = None
            self.iterator.set_state(self._state)  # back to where the consumer is
            raise error
        self._state = state
        return batch

    __next__ = next

    def __iter__(self):
        return self

    def get_state(self) -> dict[str, int]:
        return dict(self._state)

    def set_state(self, state: dict[str, int]) -> None:
        self.close()
        self.iterator.set_state(state)
        self._state = self.iterator.get_state()

    def __getattr__(self, name):
        return getattr(self.iterator, name)
