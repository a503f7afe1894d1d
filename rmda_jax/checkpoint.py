"""Save and restore params and optimizer state with orbax-checkpoint (optional extra).

Optimizer states are NamedTuples of arrays, so they are ordinary pytrees: a
restore into a template of the same structure (e.g. ``tx.init(params)``) gives
back the exact arrays, and training resumes bit for bit.

Example:
  >>> import jax.numpy as jnp, tempfile, os, rmda_jax
  >>> from rmda_jax import checkpoint
  >>> params = {"w": jnp.ones((2, 2))}
  >>> tx = rmda_jax.rmda(0.1)
  >>> state = tx.init(params)
  >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
  >>> checkpoint.save(path, {"params": params, "opt_state": state})
  >>> restored = checkpoint.restore(path, {"params": params, "opt_state": tx.init(params)})
  >>> bool((restored["params"]["w"] == 1).all())
  True
"""

from __future__ import annotations

import os

import jax


def _orbax():
  try:
    import orbax.checkpoint as ocp
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "checkpointing needs orbax-checkpoint: pip install 'rmda-jax[examples]' or "
        "pip install orbax-checkpoint"
    ) from err
  return ocp


def save(path: str, tree, overwrite: bool = True) -> None:
  """Write ``tree`` (params, optimizer state, counters...) to the directory ``path``."""
  ocp = _orbax()
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree, force=overwrite)
    ckptr.wait_until_finished()


def restore(path: str, template):
  """Read the tree at ``path`` into the structure, shapes and dtypes of ``template``.

  ``template`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves (with
  shardings, to restore sharded); a NamedTuple optimizer state in it comes
  back as the same NamedTuple.
  """
  ocp = _orbax()
  path = os.path.abspath(path)
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract)
