"""progress: silent until enabled; then a line at most every interval, with rate and ETA."""

from diffgen_jax import progress


def test_track_is_silent_until_enabled_then_reports_rate_and_eta(monkeypatch):
  lines = []
  clock = [0.0]
  monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
  progress.disable()
  with progress.track("quiet", 10) as bar:
    clock[0] += 100.0
    bar.update(5)
  assert lines == []
  progress.enable(lines.append, interval=30.0)
  try:
    with progress.track("gap", total=100, unit="images x sigmas") as bar:
      clock[0] += 10.0
      bar.update(10)  # 10 s after the start: under the interval, nothing printed
      assert lines == []
      clock[0] += 30.0
      bar.update(30)  # 40 units in 40 s: 1/s, 60 left -> ETA 1 minute
      assert lines == ["gap: 40/100 images x sigmas (40%), 1.0 images x sigmas/s, ETA 0:01:00"]
      clock[0] += 60.0
      bar.update(60)
    assert lines[-1] == ("gap: 100/100 images x sigmas (100%), 1.0 images x sigmas/s, "
                         "ETA 0:00:00, took 0:01:40")
    with progress.track("short", total=1) as bar:  # never reached the interval: no lines at all
      bar.update(1)
    assert len(lines) == 2
  finally:
    progress.disable()


def test_format_seconds():
  assert progress.format_seconds(3725.9) == "1:02:05"
  assert progress.format_seconds(-3) == "0:00:00"
