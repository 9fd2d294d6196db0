"""Progress of long loops: done / total, rate and ETA, from process 0 only.

The library's long loops (gap evaluation batches, sampler batches, rung and sweep loops) report
through `track`, which does nothing until a job calls `enable` (so library calls from a notebook or
a test stay quiet). Then, on process 0: a tqdm bar when stdout is a terminal, else one line at most
every `interval` seconds (log files of cluster jobs), and a last line when a loop that printed
ends.

    with progress.track("evaluate: snapshot 3", total=8192 * 64, unit="images x sigmas") as bar:
      for batch in ...:
        bar.update(len(batch) * num_sigmas)
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import jax

_emit: Optional[Callable[[str], None]] = None
_interval = 30.0


def enable(emit: Callable[[str], None], interval: float = 30.0) -> None:
  """Reports of every later `track` go to emit(line) (process 0 only), at most every `interval` s."""
  global _emit, _interval
  _emit, _interval = emit, float(interval)


def disable() -> None:
  global _emit
  _emit = None


def format_seconds(seconds: float) -> str:
  """h:mm:ss."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class track:  # pylint: disable=invalid-name  (used like a function: `with progress.track(...)`)
  """A loop of `total` units; `update(n)` after each piece of work."""

  def __init__(self, what: str, total: float, unit: str = "items"):
    self.what, self.total, self.unit = what, float(total), unit
    self.done, self.start = 0.0, time.monotonic()
    self._last, self._printed, self._bar = self.start, False, None
    self._on = _emit is not None and jax.process_index() == 0
    if self._on and sys.stdout.isatty():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, desc=what, unit=unit, leave=False, dynamic_ncols=True)

  def line(self) -> str:
    elapsed = time.monotonic() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    pct = 100.0 * self.done / self.total if self.total else 100.0
    eta_text = format_seconds(eta) if eta != float("inf") else "?"
    return (f"{self.what}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%), "
            f"{rate:,.1f} {self.unit}/s, ETA {eta_text}")

  def update(self, n: float = 1) -> None:
    self.done += n
    if not self._on:
      return
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.monotonic()
    if now - self._last >= _interval and self.done < self.total:  # the end: close() says it
      self._last, self._printed = now, True
      _emit(self.line())

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    elif self._on and self._printed:
      _emit(self.line() + f", took {format_seconds(time.monotonic() - self.start)}")
    self._on = False

  def __enter__(self) -> "track":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
