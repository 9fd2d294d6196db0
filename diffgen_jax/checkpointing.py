"""orbax checkpoints of a training run: the latest full state for resume, and snapshots for analysis.

    WORKDIR/checkpoints/state/<step>/     params, EMA, optimizer, step (+ seed, data position)
    WORKDIR/checkpoints/snapshots/<step>/ EMA params, step, images seen: kept for the analysis over
                                          training time, never deleted

orbax writes each checkpoint to a temporary directory (`<step>.orbax-checkpoint-tmp-<time>`) and
renames it when complete, so a checkpoint interrupted while being written is never listed, hence
never loaded (both managers delete such leftovers of a killed run when they open). The data position
is the step: the batch at step t is a pure function of (seed, t), and so is every random draw.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

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

  def save_state(self, step: int, state, meta: Dict[str, Any]) -> None:
    self.state.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, step: int) -> Dict[str, Any]:
    """Only the metadata of a full state (cheap; checked against the config before restoring)."""
    return self.state.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_state(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any]]:
    restored = self.state.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def save_snapshot(self, step: int, ema_params, meta: Dict[str, Any]) -> None:
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


def load_snapshot(workdir: str, step: int, abstract_ema=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """The EMA parameter sets ({name: params}) and metadata of one snapshot."""
  path = os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(abstract_ema), meta=ocp.args.JsonRestore()))
  return restored["ema"], restored["meta"]


def load_ema_params(workdir: str, step: int, which: str = "first") -> Tuple[str, Any, Dict[str, Any]]:
  """(name, params as device arrays, metadata) of one EMA set of a snapshot (`ema.pick` rule)."""
  ema_sets, meta = load_snapshot(workdir, step)
  name, params = ema.pick(ema_sets, which)
  return name, jax.tree.map(jnp.asarray, params), meta
