"""A stored result is never reused after an edit of the *code* that computed it.

Written as a user works: a script (here one ``case_*.py`` file per case) is run, edited, and run
again in a fresh process (`code_change_worker.py`); the edits are to code only, never to the arrays
a function holds: the activation of the user's own linen model, a helper in another module, a
module-level constant, a pytree's static auxiliary data, the computation dtype, an optimiser's
learning rate, sgd to adam. An unchanged script rerun in a fresh process resumes (the identity is
stable across processes); every edit is refused with a message naming what changed.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape_jax.core import store as store_lib

pytestmark = pytest.mark.reliability

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code_change_worker.py")

PREAMBLE = """
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import landscape_jax as lj

DATA = lj.load("digits", "train").subset(slice(0, 64))
X0 = jnp.zeros((1, 8, 8, 1))


def surface(model, path):
  p = model.init(jax.random.key(0), X0)["params"]
  d = lj.random_directions(jax.random.key(1), p)
  lj.surface_grid(lj.make_metric_fn(model, DATA), p, d, np.linspace(-1, 1, 2),
                  np.linspace(-1, 1, 2), store=path,
                  engine=lj.EngineOptions(progress=False))
"""

NET = """
class Net(nn.Module):
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8, dtype=self.dtype)(x.reshape((x.shape[0], -1)))
    return nn.Dense(10, dtype=self.dtype)({act}(x))
"""

# case -> (source with {edit}, edit of the first runs, edit of the last run, what the refusal names)
CASES = {
  "activation": (NET.replace("{act}", "{edit}") + "\ndef run(path):\n  surface(Net(), path)\n",
                 "nn.relu", "nn.tanh", "metric_fn.traced"),
  "helper": ("\nfrom helper_mod import act\n" + NET.replace("{act}", "act")
             + "\ndef run(path):\n  surface(Net(), path)\n", "", "", "metric_fn.traced"),
  "constant": ("\nSCALE = {edit}\n" + NET.replace("{act}", "SCALE * nn.relu")
               + "\ndef run(path):\n  surface(Net(), path)\n", "1.0", "0.5", "metric_fn.traced"),
  "pytree_aux": ("""
@jax.tree_util.register_pytree_node_class
class Metric:
  def __init__(self, x, temperature):
    self.x, self.temperature = x, temperature

  def tree_flatten(self):
    return (self.x,), self.temperature

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], aux)

  def __call__(self, params):
    return {"loss": jnp.mean(jnp.tanh(self.x @ params["w"] / self.temperature))}


def run(path):
  p = {"w": jnp.ones((3,))}
  d = ({"w": jnp.array([1.0, 0.0, 0.0])}, {"w": jnp.array([0.0, 1.0, 0.0])})
  lj.surface_grid(Metric(jnp.arange(12.0).reshape(4, 3), {edit}), p, d, np.linspace(-1, 1, 2),
                  np.linspace(-1, 1, 2), store=path,
                  engine=lj.EngineOptions(progress=False))
""", "1.0", "2.0", "metric_fn.traced"),
  "train_activation": (NET.replace("{act}", "{edit}") + """
def run(path):
  lj.training.train(Net(), DATA, config={"num_epochs": 1, "batch_size": 32}, workdir=path,
                    progress=False)
""", "nn.relu", "nn.tanh", "model_code"),
  "train_dtype": (NET.replace("{act}", "nn.relu") + """
def run(path):
  lj.training.train(Net(dtype={edit}), DATA, config={"num_epochs": 1, "batch_size": 32},
                    workdir=path, progress=False)
""", "jnp.float32", "jnp.bfloat16", "model_code"),
  "curve_lr": (NET.replace("{act}", "nn.relu") + """
def run(path):
  model = Net()
  a, b = (model.init(jax.random.key(s), X0)["params"] for s in (0, 1))
  loss_fn = lj.make_loss_fn(model, mean=DATA.mean, std=DATA.std)
  lj.train_curve(loss_fn, a, b, DATA, settings=lj.CurveSettings(epochs=1, batch_size=32),
                 optimizer={edit}, workdir=path, progress=False)
""", "optax.sgd(0.01)", "optax.sgd(0.02)", "optimizer_code"),
  "curve_adam": (NET.replace("{act}", "nn.relu") + """
def run(path):
  model = Net()
  a, b = (model.init(jax.random.key(s), X0)["params"] for s in (0, 1))
  loss_fn = lj.make_loss_fn(model, mean=DATA.mean, std=DATA.std)
  lj.train_curve(loss_fn, a, b, DATA, settings=lj.CurveSettings(epochs=1, batch_size=32),
                 optimizer={edit}, workdir=path, progress=False)
""", "optax.sgd(0.01)", "optax.adam(0.01)", "optimizer_code"),
}
HELPER = "import jax\n\n\ndef act(x):\n  return jax.nn.{edit}(x)\n"


def _write(directory, which):
  for case, (source, first, last, _) in CASES.items():
    edit = first if which == "first" else last
    with open(os.path.join(directory, f"case_{case}.py"), "w") as f:
      f.write(PREAMBLE + textwrap.dedent(source).replace("{edit}", edit))
  with open(os.path.join(directory, "helper_mod.py"), "w") as f:
    f.write(HELPER.replace("{edit}", "relu" if which == "first" else "gelu"))


def _run(directory):
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
             XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if "device_count" not in f))
  proc = subprocess.run([sys.executable, WORKER, directory], capture_output=True, text=True,
                        env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = {}
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      rec = json.loads(line)
      out[rec["case"]] = rec
  assert set(out) == set(CASES), (out, proc.stderr[-3000:])
  return out


def _meta(directory, case):
  path = os.path.join(directory, f"out_{case}", store_lib.META)
  return open(path, "rb").read() if os.path.exists(path) else None


@pytest.mark.slow
def test_code_edits_are_refused_and_unchanged_code_resumes(tmp_path):
  d = str(tmp_path)
  _write(d, "first")
  first = _run(d)
  assert all(r["status"] == "ok" for r in first.values()), first
  metas = {c: _meta(d, c) for c in CASES}
  again = _run(d)  # the same script in a fresh process: resumed, nothing rewritten
  assert all(r["status"] == "ok" for r in again.values()), again
  assert {c: _meta(d, c) for c in CASES} == metas
  _write(d, "last")
  edited = _run(d)
  for case, (*_, names) in CASES.items():
    rec = edited[case]
    assert rec["status"] == "refused", (case, rec)
    assert names in rec["message"], (case, rec["message"])
    assert "corrupt" not in rec["message"]
  assert {c: _meta(d, c) for c in CASES} == metas  # nothing overwritten


def test_unknown_config_key_names_the_closest_known_key(digits_train, tmp_path):
  import landscape_jax as lj

  model = lj.get_model("mlp_small", num_classes=10)
  with pytest.raises(ValueError, match="'learning_rte'.*did you mean 'learning_rate'"):
    lj.training.train(model, digits_train, config={"learning_rte": 0.5, "num_epochs": 1},
                      workdir=str(tmp_path / "typo"), progress=False)
  assert not os.path.exists(tmp_path / "typo")  # refused before anything is written


def _toy_loss(p):
  return {"loss": jnp.sum(p["w"] ** 2)}


def test_library_versions_are_named_never_silently_reused(tmp_path, monkeypatch, caplog):
  import landscape_jax as lj
  from landscape_jax.core import identity

  center, d = {"w": jnp.ones(3)}, {"w": jnp.arange(3.0)}
  xs = np.linspace(-1, 1, 3)
  run = lambda: lj.surface_grid(jax.tree_util.Partial(_toy_loss), center, d, xs,
                                store=str(tmp_path / "s"), engine=lj.EngineOptions(progress=False))
  first = run()
  real = identity.versions()
  # an upgrade that changes no traced program: resumed, and logged with the versions
  monkeypatch.setattr(identity, "versions", lambda: {**real, "jax": "99.0"})
  with caplog.at_level("WARNING"):
    np.testing.assert_array_equal(run()["loss"], first["loss"])
  assert f"jax {real['jax']} -> 99.0" in caplog.text
  # an upgrade that changes the traced program: refused, naming the versions
  text = identity.normalized_jaxpr_text
  monkeypatch.setattr(identity, "normalized_jaxpr_text", lambda c: text(c) + " changed")
  identity._TRACE_CACHE.clear()
  with pytest.raises(store_lib.StoreMismatchError,
                     match=rf"traced.*other library versions \(jax {real['jax']} -> 99.0\)"):
    run()
  identity._TRACE_CACHE.clear()
