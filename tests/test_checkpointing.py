"""`checkpointing`: checksums written with every checkpoint, damaged checkpoints detected and named,
resume falling back to the newest intact state, states proven bad set aside (issue 22, kinds 9-10).

Tiny pytrees on the 8 test devices; the end-to-end cases (the train job) are in test_training.py.
"""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffgen_jax import checkpointing, jsonio


def _state(value=1.0, n=8):
  return {"params": {"w": jnp.full((n,), value, jnp.float32)}, "step": jnp.asarray(0, jnp.int32)}


def _abstract(state):
  return checkpointing.abstract_on(state, checkpointing.replicated_sharding())


def _saved_states(tmp_path, steps=(1, 2, 3)):
  ckpt = checkpointing.Checkpoints(str(tmp_path), keep_states=10)
  for step in steps:
    ckpt.save_state(step, _state(float(step)), {"step": step})
  ckpt.wait()
  return ckpt


def _largest_file(item_dir):
  """The largest file of an orbax item (its array data, for arrays of more than a few values)."""
  files = [os.path.join(root, name) for root, _, names in os.walk(item_dir) for name in names]
  return max(files, key=os.path.getsize)


def test_every_checkpoint_is_written_with_its_checksums(tmp_path):
  ckpt = _saved_states(tmp_path, steps=(2,))
  ckpt.save_snapshot(2, {"ema": {"w": jnp.ones(4)}}, {"step": 2, "images_seen": 32})
  ckpt.wait()
  for step_dir in (ckpt.state_dir(2), os.path.join(str(tmp_path), checkpointing.SNAPSHOT_DIR, "2")):
    files = jsonio.read_json(os.path.join(step_dir, checkpointing.CHECKSUMS_FILE), "")["files"]
    on_disk = {os.path.relpath(os.path.join(root, name), step_dir)
               for root, _, names in os.walk(step_dir) for name in names}
    # Every file of every item (the step's top-level files are orbax's own, rewritten at commit).
    assert set(files) == {rel for rel in on_disk if os.sep in rel}
    assert checkpointing.check_intact(step_dir) is True
  assert ckpt.resumable_state() == (2, [])
  ckpt.close()


def test_deleted_metadata_falls_back_to_the_intact_state(tmp_path):
  """The issue's case: state 3's _METADATA deleted; resume used to fail with "pytree structure
  error" naming no file although state 2 is intact."""
  ckpt = _saved_states(tmp_path)
  os.remove(os.path.join(ckpt.state_dir(3), "state", "_METADATA"))
  step, notes = ckpt.resumable_state()
  moved = os.path.join(str(tmp_path), checkpointing.REJECTED_DIR, "state", "3.damaged")
  assert step == 2
  assert notes[0] == (f"the checkpoint {ckpt.state_dir(3)} is damaged: state/_METADATA is missing; "
                      f"moved it to {moved}")
  assert "newest intact state, step 2" in notes[-1]
  assert os.path.isdir(moved) and not os.path.exists(ckpt.state_dir(3))  # kept, not deleted
  state, meta = ckpt.restore_state(2, _abstract(_state()))
  np.testing.assert_array_equal(state["params"]["w"], np.full(8, 2.0))
  assert meta == {"step": 2}
  ckpt.save_state(3, _state(5.0), {"step": 3})  # orbax saves step 3 again (not skipped)
  ckpt.wait()
  assert ckpt.state.all_steps() == [1, 2, 3] and checkpointing.check_intact(ckpt.state_dir(3))
  ckpt.close()


@pytest.mark.parametrize("damage", ["flip", "cut", "checksums"])
def test_damaged_newest_states_are_named_and_skipped(tmp_path, damage):
  ckpt = _saved_states(tmp_path)
  for step in (2, 3):
    path = _largest_file(os.path.join(ckpt.state_dir(step), "state"))
    if damage == "checksums":
      path = os.path.join(ckpt.state_dir(step), checkpointing.CHECKSUMS_FILE)
    with open(path, "r+b") as f:
      if damage in ("cut", "checksums"):
        f.truncate(os.path.getsize(path) // 2)
      else:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x04]))
  step, notes = ckpt.resumable_state()
  why = {"flip": "SHA-256 differs", "cut": "were written",
         "checksums": f"its {checkpointing.CHECKSUMS_FILE} does not read"}[damage]
  assert step == 1 and len(notes) == 3
  for note, bad in zip(notes, (3, 2)):
    assert note.startswith(f"the checkpoint {ckpt.state_dir(bad)} is damaged: ") and why in note
  ckpt.close()


def test_no_intact_state_left_is_an_error_and_a_rerun_starts_afresh(tmp_path):
  ckpt = _saved_states(tmp_path, steps=(2,))
  os.remove(_largest_file(os.path.join(ckpt.state_dir(2), "state")))
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=r"state/2 is damaged: state/.* is missing; moved it to .*rejected/state/"
                           r"2\.damaged\. No intact state is left in .*: re-running starts from "
                           "scratch"):
    ckpt.resumable_state()
  assert ckpt.resumable_state() == (None, [])
  ckpt.close()


def test_bit_flip_in_a_snapshot_is_refused_naming_it(tmp_path):
  """The issue's case: one flipped bit in a snapshot's data loaded silently (one weight changed)."""
  w = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  ckpt.save_snapshot(4, {"ema": {"w": jnp.asarray(w)}}, {"step": 4, "images_seen": 64})
  ckpt.close()
  snapshot = os.path.join(str(tmp_path), checkpointing.SNAPSHOT_DIR, "4")
  path = _largest_file(os.path.join(snapshot, "ema"))
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))
  # orbax alone reads it without complaint, with a changed weight: only the checksums see it.
  with ocp.StandardCheckpointer() as reader:
    silently = np.asarray(reader.restore(os.path.join(snapshot, "ema"))["ema"]["w"])
  assert 1 <= np.sum(silently != w) < 10
  rel = os.path.relpath(path, snapshot)
  with pytest.raises(checkpointing.DamagedCheckpointError) as err:
    checkpointing.load_snapshot(str(tmp_path), 4)
  assert str(err.value).startswith(
      f"the checkpoint {snapshot} is damaged: the contents of {rel} changed since they were written")
  assert "cannot be measured: restore it from a copy, or move it aside" in str(err.value)
  with pytest.raises(checkpointing.DamagedCheckpointError, match=snapshot):
    checkpointing.load_ema_params(str(tmp_path), 4)


def test_checkpoints_without_checksums_still_load_and_orbax_errors_name_them(tmp_path):
  """Checkpoints written before checksums existed: read as orbax reads them; a failure names the
  directory."""
  ckpt = _saved_states(tmp_path, steps=(2, 3))
  for step in (2, 3):
    os.remove(os.path.join(ckpt.state_dir(step), checkpointing.CHECKSUMS_FILE))
  assert checkpointing.check_intact(ckpt.state_dir(3)) is False
  assert ckpt.resumable_state() == (3, [])
  state, _ = ckpt.restore_state(3, _abstract(_state()))
  np.testing.assert_array_equal(state["params"]["w"], np.full(8, 3.0))
  shutil.rmtree(os.path.join(ckpt.state_dir(3), "meta"))
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=rf"{ckpt.state_dir(3)} \(written without checksums.*does not read"):
    ckpt.restore_state(3, _abstract(_state()))
  ckpt.close()


def test_states_proven_bad_are_set_aside(tmp_path):
  ckpt = _saved_states(tmp_path, steps=(1, 2, 3, 4))
  good, moved = ckpt.reject_states_from(3)
  rejected = os.path.join(str(tmp_path), checkpointing.REJECTED_DIR, "state")
  assert good == 2 and ckpt.state.all_steps() == [1, 2]
  assert moved == [os.path.join(rejected, f"{s}.non-finite-loss") for s in (3, 4)]
  ckpt.save_state(3, _state(7.0), {"step": 3})  # a re-run writes its own state 3
  ckpt.wait()
  assert ckpt.reject_states_from(3) == (2, [os.path.join(rejected, "3.non-finite-loss.2")])
  assert ckpt.reject_states_from(1) == (None, [os.path.join(rejected, f"{s}.non-finite-loss")
                                               for s in (1, 2)])
  ckpt.close()


def test_snapshots_after_the_resumed_state_are_set_aside(tmp_path):
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  for step in (2, 4, 6):
    ckpt.save_snapshot(step, {"ema": {"w": jnp.full(4, float(step))}}, {"step": step})
  moved = ckpt.set_aside_snapshots_after(4)
  assert moved == [os.path.join(str(tmp_path), checkpointing.REJECTED_DIR, "snapshots",
                                "6.superseded")]
  ckpt.save_snapshot(6, {"ema": {"w": jnp.zeros(4)}}, {"step": 6})  # orbax no longer skips it
  ckpt.close()
  assert checkpointing.snapshot_steps(str(tmp_path)) == [2, 4, 6]
  ema, _ = checkpointing.load_snapshot(str(tmp_path), 6)
  np.testing.assert_array_equal(ema["ema"]["w"], np.zeros(4))


def test_one_process_saves_replicated_arrays_whole_without_a_program_per_device(tmp_path):
  """In one process every replicated array is written whole from one device: orbax's
  replica-parallel default compiled a slice program per (shape, device), 8 per array here, the most
  of a train job's first save. The restored arrays equal the saved ones bit for bit."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax import monitoring  # pylint: disable=import-outside-toplevel
  compiles = []

  def count(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  rng = np.random.default_rng(3)
  # Shapes no other test saves (a slice program compiled earlier in the session would be reused).
  state = {"params": {f"w{i}": jax.device_put(rng.standard_normal((8 * (i + 7), 3)).astype(
      np.float32), checkpointing.replicated_sharding()) for i in range(3)}}
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  monitoring.register_event_duration_secs_listener(count)
  try:
    ckpt.save_state(1, state, {"step": 1})
    ckpt.wait()
  finally:
    monitoring.unregister_event_duration_listener(count)
  assert len(compiles) <= 1, len(compiles)  # the finiteness check's one reduction at most
  restored, _ = ckpt.restore_state(1, _abstract(state))
  for name, w in state["params"].items():
    np.testing.assert_array_equal(restored["params"][name], np.asarray(w), err_msg=name)
  ckpt.close()
