"""What a person sees on the console while a job runs.

By default: the config once, one progress line per interval (images seen, img/s, loss, ETA), the
evaluation's progress and the final summary, printed to stdout by process 0. Library logs (absl
INFO records of this package, orbax's per-checkpoint records, jax's) are hidden unless the absl
flag --verbosity is >= 1 (`configure`); warnings and errors always show.
"""

from __future__ import annotations

import logging as py_logging
import sys

import jax
from absl import logging

# Loggers whose INFO records flood the console (orbax writes ~30 lines per checkpoint).
_NOISY_LOGGERS = ("orbax", "absl", "jax", "tensorflow", "etils")
# orbax WARNING records that describe options or layout, not problems: three per snapshot read,
# and one per snapshot from `checkpointing._saved_tree`, which reads the array metadata of the
# snapshot's "ema" item directory (the step's _CHECKPOINT_METADATA file sits one level up); and
# the note of `checkpointing._whole_shards_when_one_process` replacing jax.Array's handler.
_ORBAX_HARMLESS_NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only",
                         "Metadata file does not exist",
                         'Type handler registry type "%s" overriding')


class _DropHarmlessNotes(py_logging.Filter):

  def filter(self, record):
    return not str(record.msg).startswith(_ORBAX_HARMLESS_NOTES)


def configure(verbosity: int) -> None:
  """verbosity < 1: library logs at WARNING and above only; >= 1: everything absl would show."""
  if verbosity >= 1:
    logging.set_verbosity(logging.INFO if verbosity == 1 else logging.DEBUG)
    return
  logging.set_verbosity(logging.WARNING)
  for name in _NOISY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  absl_logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _DropHarmlessNotes) for f in absl_logger.filters):
    absl_logger.addFilter(_DropHarmlessNotes())


def _emit(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)
  logging.debug("%s", message)


def progress(message: str) -> None:
  """One progress line (always shown on process 0)."""
  _emit(message)


def summary(message: str) -> None:
  """A line of a job's final summary (always shown on process 0)."""
  _emit(message)
