"""Data flows one way through the package: weights -> model -> caches -> synthesis -> data /
train / eval / bench -> commands. Checked on the source: every `psynth` import, at module
level or inside a function (not under TYPE_CHECKING), goes to the same layer or one below,
nothing but the command line imports the `psynth` facade, and no modules import each other
in a cycle."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "psynth"
LAYERS = [
    {"atomic", "paths", "sharding", "compile_cache", "config_files", "platforms"},
    {"model"},  # the transformer, its KV cache and rotary, LoRA
    {"cache"},  # cache ops, re-encoding, mappers
    {"convert", "adapters"},  # checkpoints and adapter files in and out
    {"synthesis", "loading"},  # engine, fan-out, synthesis; load() = weights + adapter + engine
    {"data"},
    {"train", "eval", "bench", "aot"},  # aot: ahead-of-time compiles of train and synthesis
    {"commands"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module(path: Path) -> str:
  parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> list[str]:
  tree = ast.parse(path.read_text())
  skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
          and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
  out = []
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names if a.name.split(".")[0] == "psynth"]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "psynth":
      out += [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
              for a in node.names]
  return out


def _graph() -> dict[str, list[str]]:
  files = {_module(p): p for p in PKG.rglob("*.py")}
  return {m: _imports(p, set(files)) for m, p in files.items()}


def _layer(module: str) -> int:
  top = module.split(".")[1] if "." in module else "facade"
  assert top in RANK or top == "facade", f"{module}: put {top!r} in a layer of LAYERS"
  return RANK.get(top, len(LAYERS))


def test_imports_go_down_the_layers_and_never_to_the_facade():
  bad = [f"{m} -> {t}" for m, targets in _graph().items() if m != "psynth"
         for t in targets if t == "psynth" or _layer(t) > _layer(m)]
  assert not bad, "imports against the flow:\n" + "\n".join(bad)


def test_no_import_cycles():
  graph = {m: {t for t in ts if t != m} for m, ts in _graph().items()}
  graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
  done: set[str] = set()

  def visit(m, path):
    assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
    if m in done:
      return
    for t in sorted(graph[m]):
      visit(t, path + [m])
    done.add(m)

  for m in sorted(graph):
    if m != "psynth":  # the facade imports everything and nothing imports it
      visit(m, [])


def test_no_function_longer_than_60_lines():
  long = [f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)"
          for path in PKG.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and (n := node.end_lineno - node.lineno + 1) > 60]
  assert not long, "split these:\n" + "\n".join(long)
