"""docs/own_network.md runs as written: its python blocks, in order, in an empty directory.

A block whose first line is `# file: NAME` is written to NAME (a module the next blocks import);
the other `python` blocks run in one namespace, in order; blocks that import torch run in a
namespace of their own, and only with torch installed; blocks fenced `python no-run` are shown,
not run (they need files that cannot be here, e.g. NVIDIA's pickles)."""

import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "own_network.md")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
FILE = re.compile(r"\A# file: (\S+)\n")


def blocks(path=GUIDE):
  """[(info string, code, line number)] of the fenced blocks of a markdown file."""
  with open(path) as f:
    text = f.read()
  return [(m.group(1).strip(), m.group(2), text[:m.start()].count("\n") + 1)
          for m in FENCE.finditer(text)]


def _run(blocks_to_run, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  written = []
  namespace = {"__name__": "__guide__"}
  try:
    for _, code, line in blocks_to_run:
      match = FILE.match(code)
      if match:
        (tmp_path / match.group(1)).write_text(code)
        written.append(os.path.splitext(match.group(1))[0])
        continue
      exec(compile("\n" * (line) + code, GUIDE, "exec"), namespace)  # pylint: disable=exec-used
  finally:
    for name in written:
      sys.modules.pop(name, None)
  return namespace


def _python(with_torch):
  out = [b for b in blocks() if b[0] == "python"]
  return [b for b in out if ("import torch" in b[1]) == with_torch]


def test_the_guide_has_its_three_routes_and_no_stray_blocks():
  kinds = {info for info, _, _ in blocks()}
  assert kinds <= {"python", "python no-run", "bash"}, kinds
  code = "".join(c for _, c, _ in blocks())
  for needed in ("hooks.load_factory", "check_denoiser_factory", "load_features_factory",
                 "from_torch", "save_snapshot", "new_run_record", "load_reference_stats",
                 "export_config", "--config.model.denoiser=my_networks:make_denoiser",
                 'denoiser="my_networks:make_denoiser"', 'feature="hook"'):
    assert needed in code, needed


def test_the_guide_runs_as_written(tmp_path, monkeypatch):
  ns = _run(_python(with_torch=False), tmp_path, monkeypatch)
  assert sorted(ns["glob"].glob("snapshots/*.npz")) == ["snapshots/wiener-000016.npz",
                                                        "snapshots/wiener-000032.npz"]
  # The evaluate job on the hook's snapshots, measured in the feature hook's features.
  wiener = ns["results"]
  assert wiener["summary"]["images_seen"] == [16, 32]
  assert wiener["summary"]["peak_gap"][1] > 10 * wiener["summary"]["peak_gap"][0] > 0
  assert wiener["samples"]["protocol"]["feature"]["spec"] == "my_features:make_features"
  assert ns["images"].shape == (8, 8, 8, 1) and list(ns["sample_labels"]) == list(range(8))
  assert len(ns["results_lib"].read(ns["run_dir"])["snapshots"]["100"]["ema"]["ema"]["gap"]) == 2


def test_the_guide_torch_route_runs_as_written(tmp_path, monkeypatch):
  pytest.importorskip("torch")
  ns = _run(_python(with_torch=True), tmp_path, monkeypatch)
  assert ns["samples"].shape == (4, 8, 8, 1)
