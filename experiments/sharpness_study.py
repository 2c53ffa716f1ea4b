r"""Does sharpness predict generalisation? A sweep of small models on digits.

  python experiments/sharpness_study.py --config=experiments/configs/sharpness_digits.py \
      --workdir=runs/sharpness_study                          # minutes on a CPU
  python experiments/sharpness_study.py --config=experiments/configs/sharpness_digits.py \
      --workdir=/tmp/ss --tiny                                # seconds (the smoke test)

Trains every model of the config's sweep to the same train loss (`sharp_flat.train_to_loss`),
computes every measure of `sharp_flat.MEASURES` on the first ``measure_examples`` training
examples and the generalisation gap (test error - train error), then

* Kendall's tau between each measure and the gap over all models (`scipy.stats.kendalltau`);
* Jiang et al. 2020's granulated tau: for each hyperparameter, tau within every group of models
  that differ only in it, averaged over the groups (psi_i), and their mean over the
  hyperparameters (Psi);
* figures: one scatter per measure against the gap (``scatter.png``), the tau table
  (``tau.png``); ``summary.json`` has every number, ``models/<name>.json`` each model's, and a
  rerun reuses finished models.

References:
  Jiang, Neyshabur, Mobahi, Krishnan and Bengio 2020, "Fantastic Generalization Measures and
  Where to Find Them" (the protocol, granulated Kendall's tau).
  Andriushchenko et al. 2023, "A Modern Look at the Relationship between Sharpness and
  Generalization".
"""

import functools
import itertools
import json
import math
import os
import time

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Sharpness study config file (.py).")
_TINY = flags.DEFINE_bool("tiny", False, "Smoke-test sizes: 2 tiny MLPs, cheap measures.")
flags.FLAGS.set_default("verbosity", logging.WARNING)
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import _sharp_flat as sharp_flat
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

import landscape_jax as lj

MLP_HPARAMS = ("batch_size", "learning_rate", "weight_decay", "width", "depth")


def sweep(c, tiny: bool) -> list[dict]:
  """Every model of the sweep as a dict of its hyperparameters and name."""
  if tiny:
    grid = itertools.product((32, 2048), (0.1,), (0.0,), (8,), (1,))
  else:
    grid = [*itertools.product(c.batch_sizes, c.learning_rates, c.weight_decays, c.widths,
                               c.depths[:1]),
            *itertools.product(c.batch_sizes, c.learning_rates, c.weight_decays[:1], c.widths[:1],
                               c.depths[1:])]
  out = [dict(family="mlp", batch_size=b, learning_rate=lr, weight_decay=wd, width=w, depth=d,
              shortcut=None) for b, lr, wd, w, d in grid]
  if not tiny:
    for short, b in itertools.product((True, False), c.resnet_batch_sizes):
      out.append(dict(family="resnet8", batch_size=b, learning_rate=c.resnet_learning_rate,
                      weight_decay=0.0, width=c.resnet_width, depth=None, shortcut=short))
  for m in out:
    m["name"] = "_".join(f"{k}={v}" for k, v in m.items() if v is not None)
  return out


def build(m):
  if m["family"] == "mlp":
    return lj.get_model("mlp", num_classes=10, features=(m["width"],) * m["depth"])
  return lj.get_model("resnet8" if m["shortcut"] else "resnet8_noshort", num_classes=10,
                      width=m["width"])


_FORWARDS = {}


def _loss(forward, mean, std, batch_stats, params, batch):
  """Mean cross-entropy of the model in inference mode on uint8 images (normalised here)."""
  images, labels = batch
  x = (images.astype(jnp.float32) / 255.0 - mean) / std
  variables = {"params": params} if batch_stats is None else {"params": params,
                                                               "batch_stats": batch_stats}
  logits = forward(variables, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _loss_fn(m, model, train_ds, batch_stats):
  """``loss_fn(params, batch)`` whose code is one object per architecture (the BatchNorm
  statistics and the normalisation are its array arguments): every compiled measure is keyed
  on that code, so each compiles once per architecture, not once per model."""
  key = (m["family"], m["width"], m["depth"], m["shortcut"])
  if key not in _FORWARDS:
    _FORWARDS[key] = functools.partial(_loss, functools.partial(model.apply, train=False))
  return jax.tree_util.Partial(_FORWARDS[key], jnp.asarray(train_ds.mean),
                               jnp.asarray(train_ds.std), batch_stats)


def run_model(m, c, train_ds, test_ds, tiny: bool, workdir: str) -> dict:
  path = os.path.join(workdir, "models", m["name"] + ".json")
  if os.path.exists(path):
    return lj.store.read_json(path, remedy="Move it away to recompute this model.")
  model = build(m)
  variables, info = sharp_flat.train_to_loss(
    model, train_ds, batch_size=m["batch_size"], learning_rate=m["learning_rate"],
    weight_decay=m["weight_decay"], target_loss=1.0 if tiny else c.target_loss,
    max_steps=100 if tiny else c.max_steps, seed=c.seed, check_every=c.check_every)
  loss_fn = _loss_fn(m, model, train_ds, variables.get("batch_stats"))
  n = 128 if tiny else c.measure_examples
  data = lj.make_batches(train_ds.subset(slice(0, n)).arrays,
                         batch_size=min(n, c.measure_batch_size))
  start = time.time()
  measures = sharp_flat.measure_all(jax.random.key(c.seed), loss_fn, variables["params"], data,
                                    tiny=tiny)
  train, test = (sharp_flat.errors(model, variables, ds) for ds in (train_ds, test_ds))
  out = {**m, **info, "measure_seconds": round(time.time() - start, 1), "measures": measures,
         "train_error": train["error"], "test_error": test["error"], "train_loss_eval":
         train["loss"], "test_loss": test["loss"], "gap": test["error"] - train["error"]}
  lj.fileio.atomic_write_json(path, lj.store.jsonable(out))
  print(f"  {m['name']}: {info['steps']} steps, train loss {info['train_loss']:.4f}, "
        f"gap {out['gap']:.4f} ({info['seconds']} + {out['measure_seconds']} s)")
  return out


def kendall(x, y) -> float:
  x, y = np.asarray(x, float), np.asarray(y, float)
  ok = np.isfinite(x) & np.isfinite(y)
  if ok.sum() < 2:
    return float("nan")
  t = stats.kendalltau(x[ok], y[ok]).statistic
  return float(t) if t is not None and np.isfinite(t) else float("nan")


def granulated(results: list[dict], measure: str, hparams) -> dict[str, float]:
  """psi_i per hyperparameter (mean tau over the groups that differ only in it) and Psi."""
  out = {}
  for h in hparams:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
      if r.get(h) is None:
        continue
      key = tuple((k, r[k]) for k in (*MLP_HPARAMS, "family", "shortcut") if k != h)
      groups.setdefault(key, []).append(r)
    taus = [kendall([r["measures"][measure] for r in g], [r["gap"] for r in g])
            for g in groups.values() if len({r[h] for r in g}) > 1]
    taus = [t for t in taus if np.isfinite(t)]
    out[h] = float(np.mean(taus)) if taus else float("nan")
  vals = [v for v in out.values() if np.isfinite(v)]
  out["Psi"] = float(np.mean(vals)) if vals else float("nan")
  return out


def figures(results, names, taus, workdir):
  from matplotlib.figure import Figure

  cols = 4
  rows = math.ceil(len(names) / cols)
  fig = Figure(figsize=(3.2 * cols, 2.7 * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  gap = np.array([r["gap"] for r in results])
  big = np.array([r["batch_size"] >= 1024 for r in results])
  for ax, name in zip(axes, names, strict=False):
    v = np.array([r["measures"][name] for r in results])
    ax.scatter(v[~big], gap[~big], s=14, label="batch < 1024")
    ax.scatter(v[big], gap[big], s=14, marker="s", label="batch >= 1024")
    if np.all(v[np.isfinite(v)] > 0):
      ax.set_xscale("log")
    ax.set_title(f"{name}  (tau {taus[name]['tau']:+.2f})", fontsize=9)
    ax.set_ylabel("test - train error", fontsize=8)
  for ax in axes[len(names):]:
    ax.axis("off")
  axes[0].legend(fontsize=7)
  lj.plotting.save(fig, os.path.join(workdir, "scatter"))

  cols_h = [*MLP_HPARAMS, "shortcut", "Psi"]
  fig = Figure(figsize=(11, 0.32 * len(names) + 1.0), layout="constrained")
  ax = fig.subplots()
  ax.axis("off")
  cells = [[f"{taus[n]['tau']:+.2f}"] + [f"{taus[n][h]:+.2f}" for h in cols_h] for n in names]
  ax.table(cellText=cells, rowLabels=names, colLabels=["tau", *cols_h], loc="center")
  lj.plotting.save(fig, os.path.join(workdir, "tau"))


def main(argv):
  _common.check_argv(argv)
  c, workdir, tiny = _CONFIG.value, _WORKDIR.value, _TINY.value
  os.makedirs(os.path.join(workdir, "models"), exist_ok=True)
  current = {**json.loads(c.to_json()), "tiny": bool(tiny)}
  lj.store.check_or_write_config(os.path.join(workdir, "config.json"), current,
                                 what="a sharpness study", remedy="Use a new --workdir.")
  train_ds, test_ds = lj.load("digits", "train"), lj.load("digits", "test")
  start = time.time()
  results = [run_model(m, c, train_ds, test_ds, tiny, workdir) for m in sweep(c, tiny)]
  names = [*sharp_flat.MEASURES, "param norm^2"]
  gap = [r["gap"] for r in results]
  taus = {}
  for n in names:
    taus[n] = {"tau": kendall([r["measures"][n] for r in results], gap),
               **granulated([r for r in results if r["family"] == "mlp"], n, MLP_HPARAMS)}
    taus[n]["shortcut"] = granulated([r for r in results if r["family"] != "mlp"], n,
                                     ("shortcut",))["shortcut"]
  reached = sum(r["reached"] for r in results)
  _common.print_table(["measure", "tau", *MLP_HPARAMS, "shortcut", "Psi"],
                      [[n, taus[n]["tau"], *(taus[n][h] for h in MLP_HPARAMS),
                        taus[n]["shortcut"], taus[n]["Psi"]] for n in names], fmt="+.2f")
  print(f"{len(results)} models, {reached} reached the target train loss; gap "
        f"{min(gap):.4f} .. {max(gap):.4f}; {time.time() - start:.0f} s")
  figures(results, names, taus, workdir)
  _common.write_summary(workdir, {"models": results, "tau": taus, "reached": reached,
                                  "seconds": round(time.time() - start, 1),
                                  "settings": sharp_flat.budget(tiny)})


if __name__ == "__main__":
  _common.run(main)
