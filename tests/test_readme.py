"""The README's example runs as written."""

import re

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
GUARANTEES = os.path.join(ROOT, "docs", "guarantees.md")


def test_the_readme_python_example_runs(capsys):
  with open(README) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  assert blocks, "the README has no python example"
  for block in blocks:
    exec(compile(block, README, "exec"), {})  # pylint: disable=exec-used  (our own README)
  printed = capsys.readouterr().out
  assert "y* G at sigma 0.1, 1, 10:" in printed and "ELS G at sigma 0.1, 1, 10:" in printed


def test_every_test_the_readme_names_exists():
  """Each guarantee (README.md, docs/guarantees.md) names its test: a test function in tests/."""
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  sources = ""
  for name in os.listdir(tests_dir):
    if name.endswith(".py"):
      with open(os.path.join(tests_dir, name)) as f:
        sources += f.read()
  named = set()
  for path in (README, GUARANTEES):
    with open(path) as f:
      named |= set(re.findall(r"\b(test_\w+)\b(?!\.py)", f.read()))
  assert len(named) > 30
  missing = sorted(n for n in named if f"def {n}(" not in sources)
  assert not missing, f"README names tests that do not exist: {missing}"
