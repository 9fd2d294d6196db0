"""Device meshes, multi-process start-up and the checks that keep shapes and meshes consistent.

The same code runs on one CPU, on 8 simulated host devices and on a multi-host pod: the mesh comes
from the config, arrays carry NamedShardings on it, and jit does the rest.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
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


def put_batch(array, mesh: Optional[Mesh]) -> jax.Array:
  """`array` on the devices, its leading (batch) axis split over the mesh's data axis; on the
  default device when mesh is None. Raises ValueError when the batch does not divide the axis."""
  if mesh is None:
    return jax.numpy.asarray(array)
  check_divisible(len(array), mesh, "batch")
  return jax.device_put(array, batch_sharded(mesh))


def check_divisible(size: int, mesh: Mesh, what: str, axis: str = DATA_AXIS) -> None:
  n = mesh.shape[axis]
  if size % n:
    raise ValueError(f"{what}={size} must be divisible by the {n} devices of mesh axis '{axis}'")
