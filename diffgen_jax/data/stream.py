"""The training batch stream: resumable, sharded, a pure function of (seed, step).

The stream is the concatenation of per-epoch permutations (epoch e permuted by
`np.random.default_rng([seed, 0, e])`); the batch at step t is stream positions [t*B, (t+1)*B), and
its x-flips come from `np.random.default_rng([seed, 1, t])`. A batch is therefore a pure function
of (seed, t): a run resumed at step t replays the uninterrupted one exactly. With several
processes each process computes only its own rows of every global batch (`process_rows`) and
`jax.make_array_from_process_local_data` assembles the global array sharded over mesh axis "data".

Delivered batches: {"image": float32 (B, H, W, C) in [-1, 1] (uint8 / 127.5 - 1),
"label": int32 (B,)}; with labels="none" the labels are all 0 and `num_classes` is 0.
"""

from __future__ import annotations

import functools

import grain
import jax
import numpy as np

from diffgen_jax import sharding as sharding_lib
from diffgen_jax.data.splits import Split, to_unit_range

_MAX_STEPS = 2 ** 40  # the stream's length: far beyond any run




@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, 0, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch` of the training stream."""
  return _epoch_permutation(int(num_examples), int(seed), int(epoch))


def stream_indices(num_examples: int, step: int, global_batch_size: int, seed: int,
                   rows: slice = slice(None)) -> np.ndarray:
  """Split indices of (rows of) the batch at `step`: stream positions [t*B, (t+1)*B)."""
  if num_examples <= 0:
    raise ValueError("cannot draw batches from an empty split")
  if step < 0 or seed < 0:
    raise ValueError(f"step={step} and seed={seed} must be >= 0")
  pos = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)[rows]
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty_like(pos)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = epoch_permutation(num_examples, seed, int(e))[offsets[sel]]
  return out


def flip_mask(step: int, global_batch_size: int, seed: int) -> np.ndarray:
  """Which images of the batch at `step` are mirrored left-right (each with probability 1/2)."""
  return np.random.default_rng([seed, 1, step]).random(global_batch_size) < 0.5


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows [p*B/P, (p+1)*B/P) of every global batch, computed by process p of P."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by the "
                     f"{process_count} processes")
  b = global_batch_size // process_count
  return slice(process_index * b, (process_index + 1) * b)


def host_batch(split: Split, step: int, global_batch_size: int, seed: int, *,
               rows: slice = slice(None), x_flip: bool = False) -> dict:
  """Rows `rows` of the global batch at `step` as host numpy arrays."""
  idx = stream_indices(len(split), step, global_batch_size, seed, rows)
  images = to_unit_range(split.images[idx])
  if x_flip:
    flip = flip_mask(step, global_batch_size, seed)[rows]
    images = np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
  labels = np.asarray(split.labels[idx], dtype=np.int32)
  return {"image": images, "label": labels}


def batch_at(split: Split, step: int, global_batch_size: int, seed: int, *,
             x_flip: bool = False) -> dict:
  """The whole global batch at `step` on the host: a pure function of (seed, step)."""
  return host_batch(split, step, global_batch_size, seed, x_flip=x_flip)


class BatchIterator:
  """Sharded global batches from `start_step` on: batch t equals batch_at(split, t, B, seed).

  The stream is a grain `MapDataset` over steps whose element t is this process's rows of the
  global batch t (`host_batch`): random access, so batch t is a pure function of (seed, t) and a
  resumed run starts at element `start_step`. prefetch > 0 iterates it through grain's prefetching
  iterator (one reader thread, up to `prefetch` host batches ready); prefetch = 0 computes each
  batch on demand. `step` is the step of the next batch to be returned: save it with a checkpoint
  and pass it back as start_step to resume exactly. (The order of the rows, `stream_indices`, is
  ours: grain's own shuffles would give other batches than the runs already made.)
  """

  def __init__(self, split: Split, global_batch_size: int, seed: int, mesh, *,
               start_step: int = 0, x_flip: bool = False, prefetch: int = 2):
    sharding_lib.check_divisible(global_batch_size, mesh, "global_batch_size")
    if start_step < 0:
      raise ValueError(f"start_step={start_step} must be >= 0")
    self.split, self.global_batch_size, self.seed = split, global_batch_size, seed
    self.x_flip = x_flip
    self.sharding = sharding_lib.batch_sharded(mesh)
    self.rows = sharding_lib.addressable_rows(self.sharding, global_batch_size, split.shape)
    self.step = start_step
    # Element i of the dataset is the host batch at step i (an unbounded stream of steps).
    self._dataset = grain.MapDataset.range(_MAX_STEPS).map(self._host)
    self._iterator = None
    if prefetch > 0:
      self._iterator = iter(self._dataset[start_step:].to_iter_dataset(
          grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))
    self._closed = False

  def _host(self, step: int) -> dict:
    return host_batch(self.split, int(step), self.global_batch_size, self.seed, rows=self.rows,
                      x_flip=self.x_flip)

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    host = self._dataset[self.step] if self._iterator is None else next(self._iterator)
    b = self.global_batch_size
    out = {k: jax.make_array_from_process_local_data(self.sharding, v, (b,) + v.shape[1:])
           for k, v in host.items()}
    self.step += 1
    return out

  def close(self) -> None:
    """Stops the prefetching (the iterator cannot be used afterwards)."""
    self._closed = True
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    self._iterator = None

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
