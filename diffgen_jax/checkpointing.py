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
    and the last finite checkpoint.
  * Damage is detected: when orbax has written a checkpoint's files, and before it renames the
    temporary directory into place, process 0 writes `checksums.json` into it (SHA-256 and size of
    every file of every item; orbax 0.12.8 checks no data itself: the zarr3 codecs only checksum
    the shard index, and its default OCDBT files none of the data). Every reader verifies it
    before restoring: `load_snapshot` refuses a damaged snapshot (DamagedCheckpointError naming its
    directory and file); `resumable_state` moves damaged states aside and returns the newest
    intact one. A checkpoint without checksums (written by an earlier version) is read as orbax
    reads it, and an error of orbax then names its directory.
  * Nothing is deleted that orbax would not delete: a state proven bad (`reject_states_from`: the
    loss computed from it was not finite), a damaged state, and the snapshots newer than the state
    a run resumes from (`set_aside_snapshots_after`: the resumed run writes its own) are moved to
    WORKDIR/checkpoints/rejected/{state,snapshots}/<step>.<reason>/.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax import ema, jsonio

STATE_DIR = "checkpoints/state"
SNAPSHOT_DIR = "checkpoints/snapshots"
REJECTED_DIR = "checkpoints/rejected"  # <kind>/<step>.<reason>: checkpoints set aside, never read
CHECKSUMS_FILE = "checksums.json"  # in each step directory: {"files": {path: [size, sha256]}}


class DamagedCheckpointError(jsonio.DamagedFileError):
  """A checkpoint's files differ from the checksums written with it (or orbax cannot read one
  written without checksums); the message names the step directory and the file."""


class Checkpoints:
  """The two orbax managers of a workdir (checksums written with every checkpoint)."""

  def __init__(self, workdir: str, keep_states: int = 2):
    _whole_shards_when_one_process()
    self.workdir = os.path.abspath(workdir)
    self._saving: Dict[str, int] = {}  # manager directory -> step of the save in flight
    self.state = self._manager(STATE_DIR, keep_states)
    self.snapshots = self._manager(SNAPSHOT_DIR, None)

  def _manager(self, kind: str, max_to_keep: Optional[int]) -> ocp.CheckpointManager:
    directory = os.path.join(self.workdir, kind)
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
        # Runs on process 0 after every process wrote its files and before the rename: a
        # checkpoint is never listed without its checksums.
        async_options=ocp.AsyncOptions(post_finalization_callback=lambda: self._seal(directory))))

  def _seal(self, directory: str) -> None:
    # The save in flight (orbax waits for one before starting the next); its step is unknown when
    # a caller used the manager directly.
    step = self._saving.pop(directory, None)
    name = "*" if step is None else str(step)
    pending = glob.glob(os.path.join(glob.escape(directory), f"{name}.orbax-checkpoint-tmp*"))
    if pending:
      write_checksums(max(pending, key=os.path.getmtime))
    elif step is not None:  # orbax writes in place where it marks completion with a file instead
      write_checksums(os.path.join(directory, str(step)))

  def _save(self, manager: ocp.CheckpointManager, step: int, args) -> None:
    manager.wait_until_finished()  # the previous save's checksums are sealed with its own step
    self._saving[str(manager.directory)] = step
    if not manager.save(step, args=args):
      raise RuntimeError(f"orbax did not save step {step} in {manager.directory}: it holds the "
                         f"later step {manager.latest_step()}")

  def latest_state_step(self) -> Optional[int]:
    return self.state.latest_step()

  def state_dir(self, step: int) -> str:
    return os.path.join(str(self.state.directory), str(step))

  def resumable_state(self) -> Tuple[Optional[int], List[str]]:
    """(the newest intact state's step, or None when there is none; notes on what was done).

    States are checked newest first against their checksums (`check_intact`); each damaged one is
    moved to checkpoints/rejected/state/<step>.damaged, with a note naming it and the bad file.
    Raises DamagedCheckpointError when states were saved and every one is damaged (they are moved
    aside first, so that a re-run starts from scratch). Process 0 checks; every process gets its
    answer.
    """
    notes: List[str] = []

    def newest_intact() -> Optional[int]:
      for step in sorted(self.state.all_steps(), reverse=True):
        try:
          check_intact(self.state_dir(step))
          return step
        except DamagedCheckpointError as err:
          notes.append(f"{err}; moved it to {_set_aside(self.state_dir(step), 'damaged')}")
      if notes:
        raise DamagedCheckpointError("; ".join(notes) + f". No intact state is left in "
                                     f"{self.workdir}: re-running starts from scratch")
      return None

    try:
      step = _decided_by_process_0(newest_intact)
    finally:
      self.state.reload()
    if notes:
      notes.append(f"resuming from the newest intact state, step {step}")
    return step, notes

  def reject_states_from(self, step: int) -> Tuple[Optional[int], List[str]]:
    """Moves every saved state of step >= `step` (once the saves in flight have finished) to
    checkpoints/rejected/state/<step>.non-finite-loss: a training step from `step`'s state gave a
    non-finite loss, and the loss of a step depends only on the state it starts from (with the
    step's batch and noise), so no run can resume from it or from a later state. Returns (the
    newest state left, or None; the directories moved to)."""
    self.state.wait_until_finished()
    moved: List[str] = []

    def move() -> Optional[int]:
      for s in self.state.all_steps():
        if s >= step:
          moved.append(_set_aside(self.state_dir(s), "non-finite-loss"))
      return None

    _decided_by_process_0(move)
    self.state.reload()
    return self.state.latest_step(), moved

  def set_aside_snapshots_after(self, step: int) -> List[str]:
    """Moves the snapshots of steps > `step` to checkpoints/rejected/snapshots/<step>.superseded
    (a run resumed from the state of `step`, or started afresh with `step` 0, writes its own; orbax
    would skip saving a step below the latest); returns the directories moved to."""
    self.snapshots.wait_until_finished()
    moved: List[str] = []

    def move() -> Optional[int]:
      for s in self.snapshots.all_steps():
        if s > step:
          moved.append(_set_aside(os.path.join(str(self.snapshots.directory), str(s)),
                                  "superseded"))
      return None

    _decided_by_process_0(move)
    self.snapshots.reload()
    return moved

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
    self._save(self.state, step, ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)))

  def restore_state(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any]]:
    """The state onto abstract_state's shardings (any device count); FloatingPointError if it is
    non-finite (a checkpoint written before this package refused to write such states). Check the
    state first (`resumable_state`)."""
    restored = _restore(self.state, step, ocp.args.Composite(
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
    self._save(self.snapshots, step, ocp.args.Composite(ema=ocp.args.StandardSave(ema_params),
                                                        meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self.state.wait_until_finished()
    self.snapshots.wait_until_finished()

  def close(self) -> None:
    self.state.close()
    self.snapshots.close()


def _whole_shards_when_one_process() -> None:
  """In a single process, orbax writes each replicated array from one device, whole.

  orbax's default on CPU and TPU ("replica-parallel") splits a replicated array into one slice per
  replica so that several hosts share the writing; in one process the same process writes every
  slice anyway, and each (shape, device) slice is a separately compiled program: the first save
  of the tiny test U-Net's state (531 arrays, 8 devices) took 11.8 s of CPU instead of 2.2 s.
  The files hold the same bytes either way; several processes keep orbax's default. orbax reads
  this handler from its global registry (the same for every manager of the process)."""
  try:  # (orbax's metadata store has no public path; without it orbax's default stays, slower)
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  if jax.process_count() == 1:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
        override=True)


def write_checksums(step_dir: str) -> str:
  """Writes step_dir/checksums.json: {"files": {path: [size, sha256 hex]}} of every file in the
  items' subdirectories (orbax rewrites the step's top-level files when it commits); returns its
  path."""
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if os.sep in rel:
        files[rel] = [os.path.getsize(path), file_sha256(path)]
  out = os.path.join(step_dir, CHECKSUMS_FILE)
  jsonio.write_json(out, {"algorithm": "sha256", "files": files})
  return out


def check_intact(step_dir: str) -> bool:
  """Verifies a checkpoint's files against its checksums.json: True when they match, False when
  it has none (written by an earlier version of this package). Raises DamagedCheckpointError
  naming step_dir and the first missing, resized or changed file."""
  manifest = os.path.join(step_dir, CHECKSUMS_FILE)
  if not os.path.exists(manifest):
    return False
  damaged = lambda why: DamagedCheckpointError(f"the checkpoint {step_dir} is damaged: {why}")
  try:
    files = jsonio.read_json(manifest, "")["files"]
    entries = [(str(rel), int(size), str(digest)) for rel, (size, digest) in files.items()]
  except (jsonio.DamagedFileError, KeyError, TypeError, ValueError, AttributeError) as err:
    raise damaged(f"its {CHECKSUMS_FILE} does not read ({err})") from None
  for rel, size, digest in sorted(entries):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      raise damaged(f"{rel} is missing")
    if os.path.getsize(path) != size:
      raise damaged(f"{rel} has {os.path.getsize(path)} bytes, {size} were written")
    if file_sha256(path) != digest:
      raise damaged(f"the contents of {rel} changed since they were written (SHA-256 differs)")
  return True


def file_sha256(path: str) -> str:
  """The hex sha256 of a file's bytes (read in blocks: any size)."""
  with open(os.path.expanduser(path), "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _set_aside(step_dir: str, reason: str) -> str:
  """Moves a step directory to WORKDIR/checkpoints/rejected/<kind>/<step>.<reason>[.<n>]; returns
  the new path."""
  kind_dir = os.path.dirname(step_dir)
  workdir = os.path.dirname(os.path.dirname(kind_dir))  # kind_dir: WORKDIR/checkpoints/<kind>
  target = os.path.join(workdir, REJECTED_DIR, os.path.basename(kind_dir),
                        f"{os.path.basename(step_dir)}.{reason}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  unique, n = target, 1
  while os.path.exists(unique):
    n += 1
    unique = f"{target}.{n}"
  os.rename(step_dir, unique)
  return unique


def _decided_by_process_0(decide: Callable[[], Optional[int]]) -> Optional[int]:
  """decide() on process 0 only (it may move files); its answer (a step or None) on every process,
  which waits for it. An error of process 0 is raised there, and named on the others."""
  if jax.process_count() == 1:
    return decide()
  error, value = None, -1
  if jax.process_index() == 0:
    try:
      answer = decide()
      value = -1 if answer is None else int(answer)
    except Exception as err:  # pylint: disable=broad-except  (re-raised below, after the others know)
      error, value = err, -2
  value = int(multihost_utils.broadcast_one_to_all(np.int64(value)))
  if error is not None:
    raise error
  if value == -2:
    raise RuntimeError("process 0 stopped while checking the checkpoints: see its error")
  return None if value == -1 else value


def _restore(manager: ocp.CheckpointManager, step: int, args):
  """manager.restore, with orbax's errors on a checkpoint that has no checksums (so could not be
  checked before) as DamagedCheckpointError naming its directory."""
  try:
    return manager.restore(step, args=args)
  except (ValueError, KeyError, TypeError, OSError) as err:
    step_dir = os.path.join(str(manager.directory), str(step))
    if os.path.exists(os.path.join(step_dir, CHECKSUMS_FILE)):
      raise
    raise DamagedCheckpointError(
        f"the checkpoint {step_dir} (written without checksums, by an earlier version) does not "
        f"read: {type(err).__name__}: {err}. Move it aside (e.g. to {REJECTED_DIR}/) to use an "
        "earlier one") from err


def snapshot_steps(workdir: str) -> List[int]:
  """Steps of the completed snapshots of a run, ascending."""
  path = os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)
  if not os.path.isdir(path):
    return []
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    return sorted(mngr.all_steps())


def natural_key(name: str) -> Tuple[Any, ...]:
  """The sort key of a snapshot's name in the natural order: runs of digits compare as numbers
  ("net-2" before "net-10"; "20" before "100"), the rest as text."""
  parts = re.split(r"(\d+)", str(name))
  return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def snapshot_order(keys) -> List[str]:
  """Snapshot keys (a run's steps as strings, or a hook's file names) in training order: the
  natural order of `natural_key` (for a run's steps, their numeric order)."""
  return sorted((str(k) for k in keys), key=natural_key)


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
  """ShapeDtypeStructs of a tree (arrays or checkpoint metadata) carrying `sharding`: one for all
  leaves, a matching tree of shardings, or a function of the tree returning one of those (e.g.
  `lambda tree: training.parameter_sharding(tree, mesh)`: the parameters sharded as trained): a
  restore target on the current devices."""
  if callable(sharding) and not isinstance(sharding, jax.sharding.Sharding):
    sharding = sharding(tree)
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

  Restored onto abstract_ema's shardings when given, else onto `sharding` (`abstract_on`: one
  sharding, a tree of them, or a function of the saved tree such as the run's parameter sharding
  over an evaluation mesh; default: replicated over every current device), whatever device count
  the snapshot was written with: orbax would otherwise restore onto the saved topology and fail
  ("Topology mismatch") on another count.

  Raises DamagedCheckpointError naming the snapshot's directory when its files differ from their
  checksums (`check_intact`), or when one written without checksums does not read.
  """
  path = os.path.join(os.path.abspath(workdir), SNAPSHOT_DIR)
  step_dir = os.path.join(path, str(step))
  try:
    check_intact(step_dir)
  except DamagedCheckpointError as err:
    raise DamagedCheckpointError(f"{err}. This snapshot cannot be measured: restore it from a "
                                 f"copy, or move it aside (e.g. to {REJECTED_DIR}/)") from None
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    if abstract_ema is None:
      try:
        saved = _saved_tree(os.path.join(step_dir, "ema"))
      except (ValueError, KeyError, TypeError, OSError) as err:
        raise DamagedCheckpointError(f"the snapshot {step_dir} does not read ({type(err).__name__}: "
                                     f"{err})") from err
      abstract_ema = abstract_on(saved, sharding if sharding is not None else replicated_sharding())
    restored = _restore(mngr, step, ocp.args.Composite(
        ema=ocp.args.StandardRestore(abstract_ema), meta=ocp.args.JsonRestore()))
  return restored["ema"], restored["meta"]


def load_ema_params(workdir: str, step: int, which: str = "first", *, sharding=None
                    ) -> Tuple[str, Any, Dict[str, Any]]:
  """(name, params as device arrays, metadata) of one EMA set of a snapshot (`ema.pick` rule),
  restored onto `sharding` (as `load_snapshot`)."""
  ema_sets, meta = load_snapshot(workdir, step, sharding=sharding)
  name, params = ema.pick(ema_sets, which)
  return name, jax.tree.map(jnp.asarray, params), meta
