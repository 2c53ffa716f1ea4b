"""Progress bars: one bar per long call (the Hessian functions count their Hessian-vector
products from inside the compiled loops), none in logs, and results that never depend on it."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tqdm

import landscape_jax as lj
from landscape_jax.core import progress as progress_lib


def _problem():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"w": jax.random.normal(k1, (4, 3)), "b": jnp.zeros((3,))}
  x = jax.random.normal(k2, (16, 4))
  y = jax.random.randint(k3, (16,), 0, 3)

  def loss_fn(p, batch):
    xb, yb = batch
    logits = jnp.tanh(xb @ p["w"] + p["b"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(yb.shape[0]), yb])

  return loss_fn, params, (x, y)


@pytest.fixture
def bars(monkeypatch):
  """Every bar the library opens, shown (into a buffer) as if on a terminal."""
  made = []

  def visible(iterable=None, *, total=None, desc=None, unit="it", enabled=True, initial=0, **kw):
    bar = tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                    disable=not enabled, file=io.StringIO(), **kw)
    made.append(bar)
    return bar

  monkeypatch.setattr(progress_lib, "progress_bar", visible)
  return made


def test_hessian_functions_show_one_bar_counting_every_product(bars):
  loss_fn, params, batch = _problem()
  eig = lj.hessian_eigenvalues(loss_fn, params, batch, top_k=2, num_steps=15)
  tr = lj.hessian_trace(jax.random.key(1), loss_fn, params, batch, num_probes=5, chunk_size=2)
  sd = lj.spectral_density(jax.random.key(2), loss_fn, params, batch, num_probes=3, num_steps=4)
  assert [b.desc for b in bars] == ["Hessian eigenvalues", "Hessian trace", "Hessian density"]
  assert [(b.n, b.total) for b in bars] == [(15, 15), (5, 5), (12, 12)]
  # The bar never changes a number: the same calls without it, bit for bit.
  bars.clear()
  eig0 = lj.hessian_eigenvalues(loss_fn, params, batch, top_k=2, num_steps=15, progress=False)
  tr0 = lj.hessian_trace(jax.random.key(1), loss_fn, params, batch, num_probes=5,
                         progress=False)
  sd0 = lj.spectral_density(jax.random.key(2), loss_fn, params, batch, num_probes=3,
                            num_steps=4, progress=False)
  assert [b.n for b in bars] == [0, 0, 0]  # progress=False: a bar that never moves
  np.testing.assert_array_equal(eig.ritz_values, eig0.ritz_values)
  np.testing.assert_array_equal(tr.samples, tr0.samples)
  np.testing.assert_array_equal(sd.nodes, sd0.nodes)
  # And they are the Hessian's: the dense one of this 15-parameter model (15 steps: exact).
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat),
                                        np.float64))
  np.testing.assert_allclose(eig.top, dense[::-1][:2], rtol=1e-4, atol=1e-6)


def test_bars_are_quiet_in_logs_and_in_notebooks_without_widgets(monkeypatch):
  log = io.StringIO()  # not a terminal
  bar = progress_lib.progress_bar(total=3, desc="x", file=log)
  bar.update(3)
  bar.close()
  assert bar.disable and log.getvalue() == ""
  assert progress_lib.progress_bar(total=3, enabled=False).disable
  # A kernel without ipywidgets: a text bar there would be a new output per refresh.
  monkeypatch.setattr(progress_lib, "in_notebook", lambda: True)
  monkeypatch.setattr(progress_lib.importlib.util, "find_spec", lambda name: None)
  assert progress_lib.progress_bar(total=3).disable


def test_not_in_notebook_in_a_plain_interpreter():
  assert progress_lib.in_notebook() is False
