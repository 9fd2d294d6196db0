"""Device meshes, multi-process start-up and the checks that keep shapes and meshes consistent;
batches and training sets laid out over a mesh from where they live (each process its own rows).

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


# Rows this process has built or read on its host, by kind: "batch" (put_batch), "shard" (the
# largest shard rows_on_mesh built), "source" (training-set rows read by read_rows), "read" (the
# largest single read). Tests read it to check that with P processes each built or read 1/P of the
# rows, a block at a time. Reset it with .clear().
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
# Training sets laid out over a mesh from where they live (a source), never whole in one place.
#
# A source is anything with len(), .shape (N, ...) and indexing by a slice or an int array that
# returns numpy rows: a numpy array, or `LazyRows` over a lazily decoded split. y*, the analytic
# ladder, nearest neighbours and the copy test (optimal.py, optimal_patches.py,
# evaluation/neighbours.py, evaluation/copies.py) read theirs with the functions below: each
# process reads only its share (`counted_rows`, `rows_on_mesh`), a host block at a time
# (`read_rows`, counted in `rows_built`), and float64 statistics over the rows are added in order
# (`RowSum`) and then over processes (`sum_counted`), so one process gives the whole array's bits.

# Values per host block (float64 on the host: 32 MiB): a 65,536-row accelerator chunk of
# ImageNet-64 images is read and converted in pieces, never held in float64 at once.
_HOST_BLOCK_VALUES = 1 << 22


def training_source(images, name: str = "train_images", ndim: Optional[int] = None,
                    layout: Optional[str] = None):
  """(source, N, item shape) of a training set given as a source or an array; nothing is read.

  A source (anything with .shape, __getitem__ and __len__) is kept as it is and read where it is
  needed (`read_rows`). A jax array is fetched to the host (`fetch`); anything else (nested lists)
  goes through np.asarray. Raises ValueError naming `name` when the shape is not (N, ...) with
  N >= 1, at least one more axis and no empty axis, or (given ndim) has another number of axes
  than ndim (the message then says `layout`, e.g. data.convention.CONVENTION).
  """
  if isinstance(images, jax.Array):
    images = fetch(images)
  elif not all(hasattr(images, a) for a in ("shape", "__getitem__", "__len__")):
    images = np.asarray(images)
  shape = tuple(images.shape)  # a source's declared shape: nothing is read here
  if ndim is not None and len(shape) != ndim:
    raise ValueError(f"{name} must be {layout or f'{ndim}-D'}; got shape {shape}")
  if len(shape) < 2 or 0 in shape:
    raise ValueError(f"{name} must be a non-empty (N, ...) array, got shape {shape}")
  return images, shape[0], shape[1:]


def read_rows(source, index, name: str = "train_images", check=None) -> np.ndarray:
  """Rows `index` (a slice, or an int array) of a source as numpy: an int array of consecutive
  rows is read as one slice (no copy from a numpy array; a lazy source decodes one run), any other
  as one fancy-indexed read. check(rows), if given, runs on every read (e.g. the image convention
  on the rows this process reads). Counted in `rows_built` ("source": rows read by this process;
  "read": the largest single read), so tests can check that a process reads only its share of a
  training set, a block at a time. Raises ValueError naming `name` when the source returns rows of
  another shape than its .shape promises, or whatever `check` raises."""
  if not isinstance(index, slice):
    index = np.asarray(index)
    consecutive = len(index) and int(index[-1]) - int(index[0]) + 1 == len(index)
    if consecutive and np.all(np.diff(index) == 1):
      index = slice(int(index[0]), int(index[-1]) + 1)
  count = len(range(*index.indices(len(source)))) if isinstance(index, slice) else len(index)
  rows = np.asarray(source[index])
  if rows.shape != (count,) + tuple(source.shape[1:]):
    raise ValueError(f"{name}: a read returned rows of shape {rows.shape} for {count} rows, but "
                     f"the source's shape is {tuple(source.shape)}")
  if check is not None:
    check(rows)
  rows_built["source"] += len(rows)
  rows_built["read"] = max(rows_built["read"], len(rows))
  return rows


def host_block(chunk: int, d: int) -> int:
  """Rows per host read of rows of d values: at most `chunk` and _HOST_BLOCK_VALUES values."""
  return max(1, min(chunk, _HOST_BLOCK_VALUES // max(1, d)))


def blocks(index, block: int):
  """Consecutive pieces of at most `block` entries of an index array."""
  for start in range(0, len(index), block):
    yield index[start:start + block]


def host_zeros(shape, dtype, fill=0) -> np.ndarray:
  """np.full(shape, fill, dtype) with its data 64-byte aligned: jax's CPU backend then takes such
  an array as a device buffer without copying it, so a shard built on the host is not held twice
  while it goes to a CPU device (numpy's own large allocations sit 16 bytes past a page)."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.zeros(size + 64, np.uint8)
  start = -raw.ctypes.data % 64
  out = raw[start:start + size].view(dtype).reshape(shape)
  if fill:
    out.fill(fill)
  return out


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


def padded_rows(n: int, chunk_size: int, mesh: Optional[Mesh], axis: str = DATA_AXIS) -> tuple:
  """(chunk, total) of n rows laid out over the mesh's `axis` (one shard without a mesh) in whole
  chunks per shard (`shard_rows`): total >= n rows, the last total - n of them padding. With
  chunk_size=1: the even split of the rows over the axis, for statistics that lay nothing out."""
  shards = 1 if mesh is None else mesh.shape[axis]
  chunk, per_shard = shard_rows(n, shards, chunk_size)
  return chunk, shards * per_shard


def counted_spans(total_rows: int, mesh: Optional[Mesh], axis: str = DATA_AXIS) -> list:
  """The spans [lo, hi) of a (total_rows, ...) array split over `axis` whose rows THIS process
  counts in a statistic summed over processes (`sum_counted`), ascending. Each span is counted
  once over all processes, by the process of its first device: a span replicated over the mesh's
  other axes (a model axis across hosts) lives on devices of several processes, and counting it on
  each would count it twice. A mesh of this process's devices only: every span. Without a mesh:
  [(0, total_rows)]."""
  if mesh is None:
    return [(0, total_rows)]
  holders = {}
  for device, index in NamedSharding(mesh, P(axis)).devices_indices_map((total_rows,)).items():
    span = index[0].indices(total_rows)[:2]
    key = (device.process_index, device.id)
    holders[span] = min(holders.get(span, key), key)
  return sorted(span for span, (process, _) in holders.items() if process == jax.process_index())


def counted_rows(order, n: int, total: int, mesh: Optional[Mesh],
                 axis: str = DATA_AXIS) -> np.ndarray:
  """The source rows (ascending) this process counts in sums over a training set: the rows
  order[lo:hi] of its `counted_spans` of the padded (total,) layout whose row r < n holds source
  row order[r]. One process: every row, 0..n-1 in order."""
  parts = [order[lo:min(hi, n)] for lo, hi in counted_spans(total, mesh, axis) if lo < n]
  return np.sort(np.concatenate(parts + [np.zeros((0,), np.int64)]))


def across_processes(mesh: Optional[Mesh]) -> bool:
  """Whether `mesh` has devices of other processes than this one (False without a mesh)."""
  return mesh is not None and any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def sum_counted(partial_sum, mesh: Optional[Mesh]) -> np.ndarray:
  """A float64 statistic summed over the rows this process counts (`counted_rows`) made the
  statistic of all rows: added over processes (`sum_over_processes`) for a mesh across processes;
  as it is otherwise (no mesh, or a mesh of this process's devices: this process counted every row
  itself, and no collective runs). Every process holding the mesh must call it."""
  if across_processes(mesh):
    return sum_over_processes(partial_sum)
  return np.asarray(partial_sum, np.float64)


class RowSum:
  """The float64 sum over axis 0 of rows of d values added in order, block after block, with the
  bits of np.sum(whole, axis=0, dtype=float64) (np.mean's sum) over the whole array of those rows,
  whatever the blocks: for d >= 2 numpy adds a C-ordered array row after row, so each block is
  added to the running sum by one np.add.reduce; a single column (d = 1) numpy sums pairwise
  instead, so its values are kept (N / P floats) and summed at once by `value`."""

  def __init__(self, d: int):
    self.d, self.acc, self.column = d, None, []

  def add(self, rows) -> None:
    """Adds rows (m, ...) of d real values each, converted to float64 a host block at a time (a
    whole shard of rows is never held in float64 at once)."""
    rows = np.asarray(rows).reshape(len(rows), self.d)
    step = host_block(len(rows), self.d)
    for start in range(0, len(rows), step):
      values = np.asarray(rows[start:start + step], np.float64)
      if self.d == 1:
        self.column.append(values)
      else:
        self.acc = np.add.reduce(values if self.acc is None else
                                 np.concatenate([self.acc[None], values]), axis=0)

  def value(self) -> np.ndarray:
    """The (d,) float64 sum so far (zeros before any row)."""
    if self.d == 1:
      return np.add.reduce(np.concatenate(self.column + [np.zeros((0, 1))]), axis=0)
    return np.zeros((self.d,)) if self.acc is None else self.acc


def streamed_sum(source, rows, d: int, convert, block: int,
                 name: str = "train_images") -> np.ndarray:
  """The float64 (d,) sum over source rows `rows` (ascending) of convert(raw rows) -> (m, ...)
  real rows of d values, read `block` rows at a time (`read_rows`) and added in order (`RowSum`):
  with one process (rows = 0..N-1) bit-identical to the whole array's np.sum(axis=0) in float64.
  Without rows: zeros."""
  total = RowSum(d)
  for piece in blocks(rows, block):
    total.add(convert(read_rows(source, piece, name)))
  return total.value()
