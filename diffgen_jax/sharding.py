"""Device meshes, multi-process start-up and the checks that keep shapes and meshes consistent.

The same code runs on one CPU, on 8 simulated host devices and on a multi-host pod: the mesh comes
from the config, arrays carry NamedShardings on it, and jit does the rest.
"""

from __future__ import annotations

import collections
import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax.checks import check_number

DATA_AXIS = "data"
MODEL_AXIS = "model"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Starts jax.distributed when several processes run; a no-op for a single process.

  Explicit arguments (e.g. two local processes on 127.0.0.1) or a cluster that jax detects by
  itself (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS). On CPU the cross-process collectives use gloo.
  """
  if jax.distributed.is_initialized():
    return
  explicit = num_processes is not None and num_processes > 1
  detected = any(os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                             "MEGASCALE_COORDINATOR_ADDRESS"))
  detected = detected or int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if not (explicit or detected):
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A (data, model) mesh over all devices; data=-1 takes every device not used by `model`.

  Axes are Auto so that jit propagates shardings and eager code on sharded arrays works.
  Raises ValueError when model does not divide the device count or data * model differs from it.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"model={model} must be >= 1 and divide the {n} available devices")
  if data == -1:
    data = n // model
  if data < 1 or data * model != n:
    raise ValueError(f"data * model must equal the {n} available devices, got "
                     f"data={data}, model={model}; use data=-1 to take all remaining devices")
  grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def batch_multiple(batch_size: int, mesh: Optional[Mesh]) -> int:
  """batch_size rounded up to a multiple of the mesh's data axis (unchanged without a mesh).
  Raises ValueError unless batch_size is an integer >= 1."""
  check_number(batch_size, "batch_size", low=1, integer=True)
  d = 1 if mesh is None else mesh.shape[DATA_AXIS]
  return -(-int(batch_size) // d) * d


# Rows each process has built on its host for put_batch, by process (this one only): a test reads
# it to check that with P processes each built 1/P of every batch. Reset it with .clear().
rows_built: "collections.Counter[str]" = collections.Counter()


def addressable_rows(sharding, global_batch_size: int, item_shape: Sequence[int] = ()) -> slice:
  """The rows of a global batch held by this process's devices under `sharding` (split over the
  leading axis): one contiguous span for a mesh over jax.devices(), which lists devices by process.
  Raises ValueError when they are not contiguous (a mesh whose devices are not ordered by process).
  """
  index_map = sharding.addressable_devices_indices_map((global_batch_size,) + tuple(item_shape))
  spans = sorted({(s[0].indices(global_batch_size)[:2]) for s in index_map.values()})
  lo, hi = spans[0][0], max(stop for _, stop in spans)
  covered = np.zeros(global_batch_size, bool)
  for a, b in spans:
    covered[a:b] = True
  if not covered[lo:hi].all():
    raise ValueError("this process's devices hold non-contiguous rows of the batch; order the "
                     "mesh devices by process")
  return slice(lo, hi)


def put_batch(array, mesh: Optional[Mesh]) -> jax.Array:
  """`array` on the devices, its leading (batch) axis split over the mesh's data axis; on the
  default device when mesh is None.

  array: a numpy array, or anything with len(), .shape and slicing along the first axis that
  returns numpy (e.g. `LazyRows`). With several processes each builds (slices) only the rows its
  own devices hold. Raises ValueError when the batch does not divide the axis.
  """
  if mesh is None:
    return jax.numpy.asarray(np.asarray(array))
  check_divisible(len(array), mesh, "batch")
  target = batch_sharded(mesh)
  if jax.process_count() == 1:
    rows_built["batch"] += len(array)
    return jax.device_put(np.asarray(array), target)
  shape = (len(array),) + tuple(array.shape[1:])
  local = addressable_rows(target, shape[0], shape[1:])
  mine = np.asarray(array[local])
  rows_built["batch"] += len(mine)
  return jax.make_array_from_process_local_data(target, mine, shape)


class LazyRows:
  """Rows `rows` of `source` (anything indexable by an int array: numpy, a lazily decoded image
  zip), read only when sliced, so `put_batch(LazyRows(images, rows), mesh)` reads from the source
  only this process's share of a batch. transform(numpy rows) -> numpy is applied to what is read.
  """

  def __init__(self, source, rows, transform=None):
    self.source, self.rows, self.transform = source, np.asarray(rows), transform
    self.shape = (len(self.rows),) + tuple(source.shape[1:])

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index) -> np.ndarray:
    out = np.asarray(self.source[self.rows[index]])
    return out if self.transform is None else self.transform(out)

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[slice(None)]
    return out if dtype is None else out.astype(dtype)


def fetch(x) -> np.ndarray:
  """A (possibly multi-process) jax array as one numpy array on every process: the gathered
  whole. Cheap when the array is fully addressable or replicated; else one all-gather."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_divisible(size: int, mesh: Mesh, what: str, axis: str = DATA_AXIS) -> None:
  n = mesh.shape[axis]
  if size % n:
    raise ValueError(f"{what}={size} must be divisible by the {n} devices of mesh axis '{axis}'")


# ------------------------------------------------------------------------------------------------
# Training sets laid out over a mesh from where they live (a source), never whole in one place


def shard_rows(n: int, shards: int, chunk_size: int) -> tuple:
  """(chunk, rows per shard) for n rows streamed in chunks over `shards` shards: the chunk is
  min(chunk_size, ceil(n / shards)) and every shard holds the same whole number of chunks, so the
  padded total is shards * rows per shard >= n (the padding rows are the caller's to mark)."""
  check_number(n, "n", low=1, integer=True)
  check_number(shards, "shards", low=1, integer=True)
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  chunk = min(int(chunk_size), -(-n // shards))
  per_shard = -(-n // (chunk * shards)) * chunk
  return chunk, per_shard


def process_span(total_rows: int, mesh: Optional[Mesh], axis: str = DATA_AXIS) -> slice:
  """The rows [lo, hi) of a (total_rows, ...) array split over `axis` that this process's devices
  hold (all rows without a mesh or with one process)."""
  if mesh is None or jax.process_count() == 1:
    return slice(0, total_rows)
  return addressable_rows(NamedSharding(mesh, P(axis)), total_rows)


def rows_on_mesh(total_rows: int, build, mesh: Optional[Mesh], axis: str = DATA_AXIS) -> dict:
  """Global arrays {name: (total_rows, ...)} split over the mesh's `axis` (replicated over its
  other axes), each shard built on the process whose device holds it: build(lo, hi) returns
  {name: numpy rows [lo, hi)}. One shard is on the host at a time, so a process holds at most
  one shard's rows beyond what its devices hold. Without a mesh: one build(0, total_rows) on the
  default device.
  """
  if mesh is None:
    # device_put, not jnp.asarray: on CPU it takes a 64-byte aligned host array without a copy.
    return {k: jax.device_put(np.asarray(v)) for k, v in build(0, total_rows).items()}
  sharding = NamedSharding(mesh, P(axis))
  index_map = sharding.addressable_devices_indices_map((total_rows,))
  spans = {}
  for device, index in index_map.items():
    spans.setdefault(index[0].indices(total_rows)[:2], []).append(device)
  pieces, first = {}, None
  for (lo, hi), devices in sorted(spans.items()):
    rows = build(lo, hi)
    first = first or {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in rows.items()}
    rows_built["shard"] = max(rows_built["shard"], hi - lo)
    for k, v in rows.items():
      for device in devices:
        pieces.setdefault(k, {})[device] = jax.device_put(np.asarray(v), device)
  order = list(index_map)  # make_array_from_single_device_arrays wants every addressable device
  return {k: jax.make_array_from_single_device_arrays(
              (total_rows,) + tuple(first[k][0]), sharding, [pieces[k][d] for d in order])
          for k in pieces}


def sum_over_processes(x) -> np.ndarray:
  """The elementwise sum of a float64 host array over every process, the same on each (added in
  process order); the array itself with one process. Sent as raw bits, so nothing is rounded to
  float32 on the way (jax without x64 would)."""
  x = np.ascontiguousarray(x, np.float64)
  if jax.process_count() == 1:
    return x
  bits = np.asarray(multihost_utils.process_allgather(x.reshape(-1).view(np.uint32)))
  parts = np.ascontiguousarray(bits.reshape(jax.process_count(), -1)).view(np.float64)
  return np.add.reduce(parts, axis=0).reshape(x.shape)


def counted_spans(total_rows: int, mesh: Optional[Mesh], axis: str = DATA_AXIS) -> list:
  """The spans [lo, hi) of a (total_rows, ...) array split over `axis` whose rows THIS process
  counts in a statistic summed over processes (`sum_over_processes`), ascending. Each span is
  counted once over all processes, by the process of its first device: a span replicated over
  the mesh's other axes (a model axis across hosts) lives on devices of several processes, and
  counting it on each would count it twice. Without a mesh: [(0, total_rows)]."""
  if mesh is None:
    return [(0, total_rows)]
  holders = {}
  for device, index in NamedSharding(mesh, P(axis)).devices_indices_map((total_rows,)).items():
    span = index[0].indices(total_rows)[:2]
    key = (device.process_index, device.id)
    holders[span] = min(holders.get(span, key), key)
  return sorted(span for span, (process, _) in holders.items() if process == jax.process_index())
