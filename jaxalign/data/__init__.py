"""Rows to numpy batches: sources, format adapters, chat templates and masks, batching, iterators.

See `pipeline` for the two entry points the trainers use: `build_dataset` and `BatchIterator`.
"""
