"""CI executes the Colab notebook at tiny size so that it cannot rot."""

import os
import runpy

import conftest
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  monkeypatch.setenv("LANDSCAPE_JAX_TINY", "1")
  monkeypatch.setenv("PYTHONPATH", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", conftest.child_xla_flags())  # one CPU device
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2  # the surface and the curve figures are shown inline
  # No text progress bars: without ipywidgets a bar in a notebook would be a new output at every
  # refresh (core.progress shows nothing there, and one widget per call where ipywidgets exist).
  streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "it/s]" not in streams and "pt/s]" not in streams and "|#" not in streams, streams[-2000:]


def _install_cell() -> str:
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  cell = nb.cells[1]
  assert cell.cell_type == "code" and "pip" in cell.source
  return cell.source


def _repository_url() -> str:
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["urls"]["Repository"]


@pytest.mark.parametrize("runtime,expected", [
  ("cpu", "landscape-jax[cpu] @ git+{url}"),
  ("colab-gpu", "landscape-jax @ git+{url}"),  # Colab's GPU runtimes ship TensorFlow
  ("colab-tpu", "landscape-jax[tf] @ git+{url}"),  # Colab's TPU runtimes do not
])
def test_install_cell_picks_the_extras_of_the_runtime(runtime, expected, monkeypatch, tmp_path):
  """The first cell, run where landscape_jax is not importable, installs from the repository."""
  import importlib.util
  import shutil
  import subprocess

  present = {"cpu": set(), "colab-gpu": {"google.colab", "tensorflow"},
             "colab-tpu": {"google.colab", "libtpu"}}[runtime]
  real_find_spec = importlib.util.find_spec
  calls = []
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
    object() if name in present else None if name in (
      "landscape_jax", "libtpu", "google.colab", "tensorflow") else real_find_spec(name, *a)))
  monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if (
    name == "nvidia-smi" and runtime == "colab-gpu") else None)
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  monkeypatch.delenv("LANDSCAPE_JAX_SOURCE", raising=False)
  monkeypatch.chdir(tmp_path)  # no ../pyproject.toml: not a checkout
  cell = tmp_path / "install_cell.py"
  cell.write_text(_install_cell())
  runpy.run_path(str(cell))  # the cell as a script, with the fakes above in place
  assert len(calls) == 1 and calls[0][-1] == expected.format(url=_repository_url())
  assert calls[0][1:4] == ["-m", "pip", "install"]


def test_colab_badges_open_the_notebook_of_the_repository():
  url = _repository_url()
  assert url.startswith("https://github.com/")
  badge = ("https://colab.research.google.com/github/" + url.removeprefix("https://github.com/")
           + "/blob/main/notebooks/quickstart.ipynb")
  with open(os.path.join(ROOT, "README.md")) as f:
    assert badge in f.read()
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  assert badge in nb.cells[0].source
  assert f'REPO = "{url}"' in _install_cell()


def test_every_cell_imports_the_modules_it_uses():
  """A cell run on its own (after a kernel restart, or out of order) never fails on a module
  another cell imported."""
  import ast

  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  cells = [ast.parse(c.source) for c in nb.cells if c.cell_type == "code"]

  def imported(tree):
    return {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) for a in node.names}

  modules = set().union(*map(imported, cells))
  for i, tree in enumerate(cells):
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    missing = (used & modules) - imported(tree)
    assert not missing, f"code cell {i} uses {sorted(missing)} without importing them"
