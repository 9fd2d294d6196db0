"""The package's structure, drawn from its own imports: no cycles, jobs on top, the library below.

Every `import diffgen_jax...` / `from diffgen_jax... import` statement (module level or inside a
function) is an edge. The tests assert: the module graph has no cycle; no module outside
diffgen_jax/jobs/ (and main.py, the entry point) imports a job; the library below the jobs does not
import the support modules that know configs (defaults).
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diffgen_jax")


def _module_name(path):
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
  """{module: set of diffgen_jax modules it imports}."""
  modules = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        modules[_module_name(os.path.join(root, f))] = os.path.join(root, f)
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from diffgen_jax.x import y` imports x.y when y is a module, else x.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                   for a in node.names]
      else:
        continue
      edges |= {t for t in targets if t.startswith("diffgen_jax") and t in modules and t != name}
    graph[name] = edges
  return graph


def _cycle(graph):
  state = {}

  def visit(n, stack):
    state[n] = 1
    for m in sorted(graph[n]):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m] if m in stack else [n, m]
      if m not in state:
        found = visit(m, stack + [m])
        if found:
          return found
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n, [n])
      if found:
        return found
  return None


def test_no_import_cycles():
  graph = import_graph()
  # Package __init__ files that only re-export their submodules are not layers of their own.
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("forbidden", ["diffgen_jax.jobs", "diffgen_jax.defaults"])
def test_the_library_imports_no_job_and_no_config(forbidden):
  graph = import_graph()
  top = ("diffgen_jax.jobs", "diffgen_jax.main", "diffgen_jax.defaults")
  offenders = {m: sorted(e for e in edges if e == forbidden or e.startswith(forbidden + "."))
               for m, edges in graph.items() if not m.startswith(top)}
  assert not {m: e for m, e in offenders.items() if e}, offenders
