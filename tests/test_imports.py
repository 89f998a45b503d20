"""The import graph, read from the source (nothing is imported): no module
imports itself through others, and layers import only downwards."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_jax", "data_pipelines", "configs")


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
      out[name.removesuffix(".__init__")] = path
  return out


def _imports(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
  """module -> our modules it imports, at top level or inside functions.
  `from pkg import sub` counts as importing `pkg.sub`, not `pkg`."""
  def ours(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                 else node.module for a in node.names]
      else:
        continue
      edges |= {m for m in map(ours, names) if m and m != module}
    graph[module] = edges
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle, or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(module: str) -> list[str] | None:
    state[module] = 1
    path.append(module)
    for dep in sorted(graph[module]):
      if state.get(dep) == 1:
        return path[path.index(dep):] + [dep]
      if dep not in state and (found := visit(dep)):
        return found
    path.pop()
    state[module] = 2
    return None

  for module in sorted(graph):
    if module not in state and (found := visit(module)):
      return found
  return None


def test_no_import_cycles():
  assert _cycle(_imports(_modules())) is None


def test_layers_import_downwards_only():
  graph = _imports(_modules())
  evaluation = {m: sorted(d for d in deps if d.startswith("ssl_jax.jobs"))
                for m, deps in graph.items()
                if m.startswith("ssl_jax.evaluation")}
  assert not any(evaluation.values()), evaluation
  assert graph["ssl_jax.files"] == set()  # data_pipelines and all ssl_jax use it
  assert graph["ssl_jax.pytree"] == set()


def test_the_library_never_imports_the_experiments():
  """configs/ are read as files (jobs/method_configs.py), not imported."""
  graph = _imports(_modules())
  library = {m: sorted(d for d in deps if d.startswith("configs"))
             for m, deps in graph.items() if m.startswith("ssl_jax")}
  assert not any(library.values()), library
