"""Rows to numpy batches: sources, format adapters, chat templates and masks, batching, iterators.

The public entry point is `load` (see `loading`): rows from a file, directory, hub name or memory, in
any format `formats` knows, checked, tokenized and padded; `read` is its first half (check without a
tokenizer). Batches come from `BatchIterator` (see `pipeline`). ``python -m jaxalign.data.inspect
--config=...`` shows what a config's data becomes before anything trains.
"""

from jaxalign.data.loading import Rows, load, read
from jaxalign.data.pipeline import BatchIterator, TokenizedDataset

__all__ = ["BatchIterator", "Rows", "TokenizedDataset", "load", "read"]
