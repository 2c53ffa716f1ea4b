"""Sharp or flat on digits: training to a target train loss, and the sharpness measures.

Shared by the tour's sharp-vs-flat step (`tour_step`, called from experiments/quickstart.py) and
the study over a sweep of models (experiments/sharpness_study.py). No flags here.

* `train_to_loss`: SGD with momentum and weight decay on random minibatches until the
  cross-entropy over the whole training split falls to a target (checked every `check_every`
  steps, in one compiled `lax.scan` per check), so that models trained with different batch sizes
  are compared at the same train loss (Jiang et al. 2020's stopping criterion). BatchNorm models
  train on batch statistics; their running statistics are recomputed over the split afterwards.
* `measure_all`: every measure of `landscape_jax.core.sharpness` at fixed settings
  (`MEASURES`), plus the squared parameter norm as the classic baseline.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import landscape_jax as lj
from landscape_jax.core import reparam

# name -> (function, keyword arguments); "1/sigma^2" measures report 1 / sigma^2 (Jiang et al.)
MEASURES = {
  "worst l2 standard": ("worst_case_sharpness", dict(rho=0.1, norm="l2")),
  "worst l2 adaptive": ("worst_case_sharpness", dict(rho=0.5, norm="l2", adaptive=True)),
  "worst linf standard": ("worst_case_sharpness", dict(rho=0.002, norm="linf")),
  "worst linf adaptive": ("worst_case_sharpness", dict(rho=0.01, norm="linf", adaptive=True)),
  "average standard": ("average_sharpness", dict(rho=0.02)),
  "average adaptive": ("average_sharpness", dict(rho=0.1, adaptive=True)),
  "1/sigma^2 standard": ("sigma_search", dict(target=0.1)),
  "1/sigma^2 adaptive": ("sigma_search", dict(target=0.1, adaptive=True)),
  "fisher-rao": ("fisher_rao_norm", {}),
  "hessian top standard": ("hessian_sharpness", dict(kind="top")),
  "hessian top adaptive": ("hessian_sharpness", dict(kind="top", adaptive=True)),
  "hessian trace standard": ("hessian_sharpness", dict(kind="trace")),
  "filter rise": ("filter_normalized_rise", dict(alpha=0.5)),
}


def budget(tiny: bool) -> dict:
  """Ascent steps, samples and probes of `measure_all`."""
  if tiny:
    return dict(restarts=1, steps=5, samples=4, iters=4, lanczos=5, probes=4, directions=2)
  return dict(restarts=2, steps=15, samples=16, iters=8, lanczos=15, probes=10, directions=4)


def _kwargs(fn: str, kw: dict, b: dict) -> dict:
  kw = dict(kw)
  if fn == "worst_case_sharpness":
    kw.update(ascent=lj.Ascent(restarts=b["restarts"], steps=b["steps"], patience=b["steps"]))
  elif fn == "average_sharpness":
    kw.update(num_samples=b["samples"])
  elif fn == "sigma_search":
    kw.update(num_samples=b["samples"],
              bracket=lj.Bracket(num_iters=b["iters"], lower=1e-4, upper=10.0))
  elif fn == "hessian_sharpness":
    kw.update(num_steps=b["lanczos"], num_probes=b["probes"])
  elif fn == "filter_normalized_rise":
    kw.update(num_directions=b["directions"])
  return kw


def measure(name: str, key, loss_fn, params, data, *, tiny: bool = False) -> float:
  """One measure of `MEASURES` (``1/sigma^2`` for the sigma searches)."""
  fn, kw = MEASURES[name]
  kw = _kwargs(fn, kw, budget(tiny))
  if fn in ("fisher_rao_norm",):
    return getattr(lj, fn)(loss_fn, params, data, **kw).value
  if fn == "hessian_sharpness":
    return lj.hessian_sharpness(loss_fn, params, data, key=key, **kw).value
  out = getattr(lj, fn)(key, loss_fn, params, data, **kw).value
  return 1.0 / out**2 if fn == "sigma_search" else out


def measure_all(key, loss_fn, params, data, *, tiny: bool = False,
                names=tuple(MEASURES)) -> dict[str, float]:
  """``{name: value}`` of the named measures, and the squared parameter norm ``||w||^2``."""
  out = {n: measure(n, jax.random.fold_in(key, i), loss_fn, params, data, tiny=tiny)
         for i, n in enumerate(names)}
  out["param norm^2"] = float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params)))
  return out


def train_to_loss(model, train_ds, *, batch_size: int, learning_rate: float,
                  weight_decay: float, target_loss: float, max_steps: int, seed: int = 0,
                  momentum: float = 0.9, check_every: int = 50):
  """Trains until the train-split cross-entropy is <= `target_loss` (or `max_steps`).

  Returns ``(variables, info)`` with ``info = {"steps", "train_loss", "reached", "seconds"}``.
  """
  start = time.time()
  x0 = jnp.asarray(train_ds.images[:2].astype(np.float32))
  variables = model.init(jax.random.key(seed), x0)
  params, stats = variables["params"], variables.get("batch_stats")
  loss_fn = lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std, batch_stats=stats,
                            train=stats is not None)
  tx = optax.chain(optax.add_decayed_weights(weight_decay),
                   optax.sgd(learning_rate, momentum=momentum))
  images, labels = jnp.asarray(train_ds.images), jnp.asarray(train_ds.labels)
  n = images.shape[0]
  b = min(int(batch_size), n)

  @jax.jit
  def run(params, opt_state, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.permutation(k, n)[:b]
      u, s = tx.update(jax.grad(loss_fn)(p, (images[idx], labels[idx])), s, p)
      return (optax.apply_updates(p, u), s), None
    (p, s), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, check_every))
    return p, s, loss_fn(p, (images, labels))

  opt_state = tx.init(params)
  steps, loss = 0, math.inf
  key = jax.random.key(10_000 + seed)
  while steps < max_steps and not loss <= target_loss:
    params, opt_state, loss = run(params, opt_state, jax.random.fold_in(key, steps))
    loss = float(loss)
    steps += check_every
    if not math.isfinite(loss):
      break
  out = {"params": params}
  if stats is not None:
    out["batch_stats"] = lj.recompute_batch_stats(model, params, stats, train_ds, batch_size=256)
  return out, {"steps": steps, "train_loss": loss, "reached": bool(loss <= target_loss),
               "seconds": round(time.time() - start, 1)}


def errors(model, variables, ds) -> dict[str, float]:
  """``{"loss", "error"}`` of `variables` on the split `ds`."""
  m = lj.evaluate(functools.partial(model.apply, train=False), variables, ds.images, ds.labels,
                  mean=ds.mean, std=ds.std)
  return {"loss": float(m["loss"]), "error": 1.0 - float(m["accuracy"])}


# ----------------------------------------------------------------------------------------------
# The tour's step: small vs large batch, one standard and one adaptive measure, and a rescaling.

TOUR_MEASURES = ("worst l2 standard", "worst l2 adaptive")


def tour_step(train_ds, test_ds, *, tiny: bool, save_figure) -> tuple[dict, list[str]]:
  """Two MLPs trained to the same train loss with batch 32 and 1024, their standard and adaptive
  l2 worst-case sharpness, and the same after a per-unit ReLU rescaling of each (same function).

  `save_figure(fig, name)` writes a figure; returns ``(numbers, figure files)``.
  """
  features = (32,) if tiny else (64, 64)
  model = lj.get_model("mlp", num_classes=10, features=features)
  layers = [f"Dense_{i}" for i in range(len(features) + 1)]
  data = lj.make_batches(train_ds.subset(slice(0, 256 if tiny else 1024)).arrays,
                         batch_size=128)
  numbers, values = {}, {}
  loss_fn = lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std)  # one: compiled once
  for batch in (32, 1024):
    variables, info = train_to_loss(model, train_ds, batch_size=batch, learning_rate=0.1,
                                    weight_decay=0.0, target_loss=0.5 if tiny else 0.02,
                                    max_steps=200 if tiny else 20_000, seed=0,
                                    check_every=25 if tiny else 50)
    params = variables["params"]
    scaled = reparam.random_rescaling(jax.random.key(1), params, layers, low=0.2, high=5.0)
    tag = f"batch {batch}"
    numbers[f"{tag}: train loss"] = info["train_loss"]
    numbers[f"{tag}: test error"] = errors(model, variables, test_ds)["error"]
    for which, p in (("", params), (" rescaled", scaled)):
      got = measure_all(jax.random.key(0), loss_fn, p, data, tiny=tiny, names=TOUR_MEASURES)
      for name in TOUR_MEASURES:
        numbers[f"{tag}{which}: {name}"] = got[name]
        values[(batch, which, name)] = got[name]
  from matplotlib.figure import Figure

  fig = Figure(figsize=(9.0, 3.6), layout="constrained")
  for ax, name in zip(fig.subplots(1, 2), TOUR_MEASURES, strict=True):
    xs = np.arange(2)
    for j, (which, label) in enumerate((("", "as trained"), (" rescaled", "rescaled"))):
      ax.bar(xs + 0.38 * j, [values[(b, which, name)] for b in (32, 1024)], 0.38, label=label)
    ax.set_xticks(xs + 0.19, ["batch 32", "batch 1024"])
    ax.set_yscale("log")
    ax.set_title(name, fontsize=10)
    ax.legend(fontsize=8)
  save_figure(fig, "sharp_flat")
  return numbers, ["sharp_flat.png"]
