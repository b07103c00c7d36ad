"""Builds what a run needs from the config: tokenizer, model, parameters on the mesh, reference, data."""
import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import models, sharding
from jaxalign import checkpoints
from jaxalign.data import pipeline
from jaxalign.trainers.objectives import OBJECTIVES


@dataclasses.dataclass
class Run:
  model: Any
  model_config: Any
  head: str
  params: Any
  ref_params: Optional[Any]
  tokenizer: Any
  train_iter: Any
  eval_iter_fn: Optional[Callable]
  num_train_examples: int

  def describe(self):
    n = sum(x.size for x in jax.tree.leaves(self.params))
    return f"{n / 1e6:.2f}M parameters, {self.num_train_examples} training examples"


def make_model(mcfg, head):
  return models.ScalarHeadModel(mcfg) if head == "score" else models.Transformer(mcfg)


def load_model(config, mesh, head):
  """(ModelConfig, params) from `model.path` (HF directory) or a random init from `model.init`."""
  m = config.model
  overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                   scan_layers=m.scan_layers)
  if m.path:
    mcfg, params = checkpoints.load_hf_model(m.path, mesh=mesh, head=head, **overrides)
  else:
    init = dict(m.init.to_dict())
    tok = checkpoints.load_tokenizer(m.tokenizer)
    if not init.get("vocab_size"):
      init["vocab_size"] = len(tok)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):   # for the export's config.json
      init.setdefault(name, getattr(tok, name))
    mcfg = dataclasses.replace(models.ModelConfig.from_hf(init), **overrides)
    module = make_model(mcfg, head)
    shardings = sharding.logical_to_shardings(models.param_logical_axes(mcfg, module), mesh)
    params = jax.jit(lambda k: models.init_params(mcfg, k, module), out_shardings=shardings)(
        jax.random.key(config.seed))
  return mcfg, params


def build_run(config, mesh):
  _, kind, needs_ref, head = OBJECTIVES[config.objective]
  m = config.model
  tokenizer = checkpoints.load_tokenizer(m.tokenizer or m.path, trust_remote_code=m.trust_remote_code)
  mcfg, params = load_model(config, mesh, head)
  model = make_model(mcfg, head)
  # The frozen reference: a second copy with the policy's sharding (never donated, no gradient).
  ref_params = jax.tree.map(jnp.copy, params) if needs_ref else None

  d = config.data
  common = dict(kind=kind, tokenizer=tokenizer, format=d.format, max_length=d.max_length,
                max_prompt_length=d.max_prompt_length, assistant_only_loss=d.assistant_only_loss,
                packing=d.packing)
  train_ds = pipeline.build_dataset(d.train, split="train", **common)
  train_iter = pipeline.BatchIterator(train_ds, config.train.batch_size, seed=d.shuffle_seed,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
  eval_iter_fn = None
  if d.eval:
    eval_ds = pipeline.build_dataset(d.eval, split="eval", **common)
    def eval_iter_fn():
      return pipeline.BatchIterator(eval_ds, config.train.eval_batch_size, seed=0, shuffle=False,
                                    repeat=False, process_index=jax.process_index(),
                                    process_count=jax.process_count())
  return Run(model=model, model_config=mcfg, head=head, params=params, ref_params=ref_params,
             tokenizer=tokenizer, train_iter=train_iter, eval_iter_fn=eval_iter_fn,
             num_train_examples=train_ds.num_examples if hasattr(train_ds, "num_examples") else len(train_ds))


def export(run, params, path):
  checkpoints.save_hf_model(path, run.model_config, params, tokenizer=run.tokenizer, head=run.head)
