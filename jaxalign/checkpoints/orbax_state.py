"""Resumable training checkpoints with orbax: train state + data position + run metadata.

Saved asynchronously every `train.checkpoint_every` steps and at the end; the last `keep` are kept. A
checkpoint is only visible once complete (orbax writes to a temporary directory and renames), so a crash
never leaves a half-written checkpoint to resume from.
"""
import os

import jax
import orbax.checkpoint as ocp


class StateCheckpointer:

  def __init__(self, directory, keep=2, async_save=True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_state, meta=None):
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta or {})))

  def restore(self, abstract_state, step=None):
    """`abstract_state`: the state's pytree of jax.ShapeDtypeStruct with target shardings."""
    step = self.manager.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring onto the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
