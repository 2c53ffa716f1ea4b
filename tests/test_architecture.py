"""The layout is a contract: imports only go down the layers, no module reaches into another's
private names, every public module declares `__all__`, and `import landscape_jax` stays light.

Layers, bottom to top: backends < core < adapters, models < methods < plotting (see
docs/design.md)."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "landscape_jax"
RANK = {"backends": 0, "core": 1, "adapters": 2, "models": 2, "methods": 3, "plotting": 4}


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    yield name, path, ast.parse(path.read_text(), filename=str(path))


_PARSED = {name: (path, tree) for name, path, tree in _modules()}
MODULES = sorted(_PARSED)


def _layer(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None  # None: the package's own __init__


def _imports(module: str, path: pathlib.Path, tree: ast.Module):
  """(node, imported module, imported names) of every landscape_jax import in `tree`."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      if target.split(".")[0] == "landscape_jax":
        yield node, target, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "landscape_jax":
          yield node, a.name, []


def _targets(target: str, names: list[str]) -> list[str]:
  """The modules an import statement reaches (``from landscape_jax.core import store`` reaches
  ``landscape_jax.core.store``)."""
  out = []
  for n in names or [""]:
    candidate = f"{target}.{n}" if n else target
    path = ROOT / pathlib.Path(*candidate.split("."))
    out.append(candidate if path.with_suffix(".py").exists() or path.is_dir() else target)
  return out


@pytest.mark.parametrize("module", MODULES)
def test_imports_only_go_down_the_layers(module):
  path, tree = _PARSED[module]
  layer = _layer(module)
  if layer is None:
    return  # the package __init__ may name anything (lazily)
  assert layer in RANK, f"{module}: unknown layer {layer!r}; add it to the layer table and docs"
  for node, target, names in _imports(module, path, tree):
    for reached in _targets(target, names):
      other = _layer(reached)
      assert other is not None, f"{module}:{node.lineno} imports the package facade {reached}"
      assert RANK[other] <= RANK[layer], (
        f"{module}:{node.lineno} ({layer}) imports {reached} ({other}), a higher layer")


@pytest.mark.parametrize("module", MODULES)
def test_no_function_level_imports_of_the_package(module):
  path, tree = _PARSED[module]
  top = set(map(id, tree.body))
  for node, target, _ in _imports(module, path, tree):
    assert id(node) in top, (f"{module}:{node.lineno} imports {target} inside a function: "
                             "move the code to the layer it belongs to instead")


@pytest.mark.parametrize("module", MODULES)
def test_no_private_names_cross_modules(module):
  path, tree = _PARSED[module]
  aliases = {}
  for node, target, names in _imports(module, path, tree):
    for n in names:
      assert not (n.startswith("_") and not n.startswith("__")), (
        f"{module}:{node.lineno} imports the private name {n} from {target}")
    for a in node.names:
      aliases[a.asname or a.name] = target
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      raise AssertionError(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}, a private "
                           "name of another module")


@pytest.mark.parametrize("module", MODULES)
def test_every_public_module_declares_all(module):
  path, tree = _PARSED[module]
  if path.name.startswith("_") and path.name != "__init__.py":
    return
  assigned = {t.id for node in tree.body if isinstance(node, ast.Assign | ast.AnnAssign)
              for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
              if isinstance(t, ast.Name)}
  assert "__all__" in assigned, f"{module} has no __all__"


def test_the_library_never_imports_ml_collections():
  for module, _path, tree in _modules():
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] == "ml_collections" for n in names), (
        f"{module}:{node.lineno} imports ml_collections (configs live beside the experiments)")


def test_import_is_light_and_the_facade_complete():
  """`import landscape_jax` loads none of the heavy optional libraries; every name in `__all__`
  resolves (through the lazy facade) and plotting stays unloaded until asked for."""
  code = (
    "import sys, landscape_jax as lj\n"
    "heavy = ('matplotlib', 'orbax', 'scipy', 'ml_collections', 'tensorflow', 'jax')\n"
    "print(sorted(m for m in heavy if m in sys.modules))\n"
    "[getattr(lj, n) for n in lj.__all__ if n not in ('plotting', 'report', 'write_report')]\n"
    "print('matplotlib' in sys.modules)\n"
    "lj.plotting.plot_contour\n"
    "print('matplotlib' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=True).stdout.split("\n")
  assert out[0] == "[]", out[0]
  assert out[1:3] == ["False", "True"], out
