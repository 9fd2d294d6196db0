"""orbax checkpoints of a training run: the latest full state for resume, and snapshots for analysis.

    WORKDIR/checkpoints/state/<step>/     params, EMA, optimizer, step (+ seed, data position)
    WORKDIR/checkpoints/snapshots/<step>/ EMA params, step, images seen: kept for the analysis over
                                          training time, never deleted

orbax writes each checkpoint to a temporary directory (`<step>.orbax-checkpoint-tmp-<time>`) and
renames it when complete, so a checkpoint interrupted while being written is never listed, hence
never loaded (both managers delete such leftovers of a killed run when they open). The data position
is the step: the batch at step t is a pure function of (seed, t), and so is every random draw.

Two guarantees beyond orbax's:
  * Any device count: every reader restores onto the current devices (the caller's target
    shardings, or replicated over the current mesh), never onto the topology the checkpoint was
    written on, so a run trained on 8 devices is evaluated on 1, 2 or 4 (and the other way round).
  * Only finite states: `save_state` and `save_snapshot` refuse (FloatingPointError) to write a
    state whose parameters, EMA or optimizer state hold a NaN or Inf, naming the first bad arrays
    and the last finite checkpoint; so the latest checkpoint is always one a run can resume from.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax import ema

STATE_DIR = "checkpoints/state"
SNAPSHOT_DIR = "checkpoints/snapshots"


class Checkpoints:
  """The two orbax managers of a workdir."""

  def __init__(self, workdir: str, keep_states: int = 2):
    workdir = os.path.abspath(workdir)
    self.state = ocp.CheckpointManager(
        os.path.join(workdir, STATE_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep_states, create=True,
                                             cleanup_tmp_directories=True))
    self.snapshots = ocp.CheckpointManager(
        os.path.join(workdir, SNAPSHOT_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             cleanup_tmp_directories=True))

  def latest_state_step(self) -> Optional[int]:
    return self.state.latest_step()

  def _refuse_non_finite(self, what: str, step: int, tree) -> None:
    bad = non_finite_arrays(tree)
    if bad:
      shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
      raise FloatingPointError(
          f"refusing to save the {what} at step {step}: non-finite values (NaN or Inf) in {shown}; "
          f"the last finite checkpoint is step {self.latest_state_step()} in "
          f"{os.path.dirname(self.state.directory)}")

  def save_state(self, step: int, state, meta: Dict[str, Any]) -> None:
    """Writes the full state (asynchronously); FloatingPointError if any array is non-finite."""
    self._refuse_non_finite("training state", step, state)
    self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, step: int) -> Dict[str, Any]:
    """Only the metadata of a full state (cheap; checked against the config before restoring)."""
    return self.state.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_state(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any]]:
    """The state onto abstract_state's shardings (any device count); FloatingPointError if it is
    non-finite (a checkpoint written before this package refused to write such states)."""
    restored = self.state.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    bad = non_finite_arrays(restored["state"])
    if bad:
      raise FloatingPointError(
          f"the training state at step {step} holds non-finite values (in {', '.join(bad[:5])}); "
          f"saved states: {sorted(self.state.all_steps())} in {self.state.directory}: delete the "
          "non-finite ones to resume from an earlier state")
    return restored["state"], restored["meta"]

  def save_snapshot(self, step: int, ema_params, meta: Dict[str, Any]) -> None:
    """Writes the EMA parameter sets; FloatingPointError if any array is non-finite."""
    self._refuse_non_finite("EMA snapshot", step, ema_params)
    self.snapshots.save(step, args=ocp.args.Composite(ema=ocp.args.StandardSave(ema_params),
                                                      meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self.state.wait_until_finished()
    self.snapshots.wait_until_finished()

  def close(self) -> None:
    self.state.close()
    self.snapshots.close()


def snapshot_steps(workdir: str) -> List[int]:
  """Steps of the completed snapshots of a run, ascending."""
  path = os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)
  if not os.path.isdir(path):
    return []
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    return sorted(mngr.all_steps())


def non_finite_arrays(tree) -> List[str]:
  """Paths (e.g. "params['conv']['kernel']") of the floating-point arrays holding a NaN or Inf.

  One compiled reduction per tree structure; works on sharded (also multi-host) arrays.
  """
  flat = [(jax.tree_util.keystr(path), leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if not flat:
    return []
  finite = np.asarray(jax.device_get(_all_finite([leaf for _, leaf in flat])))
  return [path.lstrip(".") for (path, _), ok in zip(flat, finite) if not ok]


@jax.jit
def _all_finite(leaves):
  return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def replicated_sharding(mesh: Optional[Mesh] = None) -> NamedSharding:
  """Replicated over `mesh`, by default over every current device (of every process)."""
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()), ("devices",))
  return NamedSharding(mesh, P())


def abstract_on(tree, sharding) -> Any:
  """ShapeDtypeStructs of a tree (arrays or checkpoint metadata) carrying `sharding` (one for all
  leaves, or a matching tree of shardings): a restore target on the current devices."""
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      sharding)


def _saved_tree(item_path: str):
  """The tree of array metadata (shapes, dtypes) of one saved item."""
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(item_path)
  tree = getattr(meta, "item_metadata", meta)
  return getattr(tree, "tree", tree)


def load_snapshot(workdir: str, step: int, abstract_ema=None, *, sharding=None
                  ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """The EMA parameter sets ({name: params}) and metadata of one snapshot, on the current devices.

  Restored onto abstract_ema's shardings when given, else onto `sharding` (default: replicated
  over every current device), whatever device count the snapshot was written with: orbax would
  otherwise restore onto the saved topology and fail ("Topology mismatch") on another count.
  """
  path = os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)
  if abstract_ema is None:
    abstract_ema = abstract_on(_saved_tree(os.path.join(path, str(step), "ema")),
                               sharding if sharding is not None else replicated_sharding())
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(abstract_ema), meta=ocp.args.JsonRestore()))
  return restored["ema"], restored["meta"]


def load_ema_params(workdir: str, step: int, which: str = "first") -> Tuple[str, Any, Dict[str, Any]]:
  """(name, params as device arrays, metadata) of one EMA set of a snapshot (`ema.pick` rule)."""
  ema_sets, meta = load_snapshot(workdir, step)
  name, params = ema.pick(ema_sets, which)
  return name, jax.tree.map(jnp.asarray, params), meta
