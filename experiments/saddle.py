r"""Permutation saddles and equal-loss valleys of a small MLP (Brea et al. 2019).

  python experiments/saddle.py --config=experiments/configs/align_saddle.py --workdir=runs/saddle
  python experiments/saddle.py --config=experiments/configs/align_saddle.py:quick \
      --workdir=/tmp/saddle

For each unit pair (i, j) of one hidden layer: the loss along the swap path
theta(s) = (1 - s) theta + s sigma_ij(theta) (`lj.permutations.swap_path`), and at the permutation
point s = 1/2 (units i and j identical): the gradient norm, the norm of its antisymmetric part
(g_i - g_j, zero by symmetry), the curvature d^T H d / |d|^2 along the swap direction
d = sigma_ij(theta) - theta, and the smallest eigenvalues of the dense Hessian (jax.hessian +
eigh, exact for this ~1.2k-parameter model; also the smallest Ritz value of
`lj.hessian_eigenvalues`). Then a quadratic Bezier curve from theta to sigma_ij(theta) is trained
(`lj.init_curve`, `lj.curve_loss`, `lj.curve_point`) to find the low-loss valley. It starts at the
permutation point; the objective is symmetric under the swap, but training with sampled ts need not
keep the bend there, and ``bend_units_max_abs_difference`` in the summary says how far units i and
j of the bend moved apart (0: the bend is still a permutation point). Writes ``summary.json``,
``paths.npz``, ``saddle_paths.png/pdf`` (the swap paths, barriers in the legend) and
``saddle_valley.png/pdf`` (straight swap path vs trained curve) to the workdir.
"""

import os

import _common

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags(
  "Saddle config file (.py).", progress_help="Show a progress bar over the unit pairs.")
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import landscape_jax as lj
from landscape_jax.core import permutations as P
from landscape_jax.models import MLP


def point_analysis(loss_fn, batch, theta, mid, swapped, layer, i, j, config):
  """Gradient, swap-direction curvature and smallest Hessian eigenvalues at the midpoint."""
  g = jax.grad(loss_fn)(mid, batch)
  k_in, k_out = g[layer]["kernel"], g[_next(layer)]["kernel"]
  antisym = float(jnp.sqrt(jnp.sum((k_in[:, i] - k_in[:, j]) ** 2)
                           + jnp.sum((k_out[i] - k_out[j]) ** 2)
                           + (g[layer]["bias"][i] - g[layer]["bias"][j]) ** 2))
  d = optax.tree.sub(swapped, theta)
  hd = jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (mid,), (d,))[1]
  curvature = float(optax.tree.vdot(d, hd) / optax.tree.vdot(d, d))
  flat, unravel = ravel_pytree(mid)
  hess = jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat)
  evals = np.linalg.eigvalsh(np.asarray(hess, np.float64))
  lanczos = lj.hessian_eigenvalues(loss_fn, mid, batch, num_steps=config.lanczos_steps,
                                   progress=False)  # one bar over the unit pairs instead
  return {"grad_norm": float(optax.tree.norm(g)), "grad_antisymmetric_norm": antisym,
          "swap_curvature": curvature,
          "smallest_eigenvalues": evals[:config.num_eigenvalues].tolist(),
          "largest_eigenvalue": float(evals[-1]),
          "num_negative_eigenvalues": int(np.sum(evals < -1e-6 * abs(evals[-1]))),
          "lanczos_smallest": float(lanczos.smallest)}


def _next(layer):
  return f"Dense_{int(layer.split('_')[1]) + 1}"


def valley(loss_fn, batch, theta, swapped, config):
  """Trains the bend of a quadratic Bezier curve theta -> swapped (Garipov et al. 2018)."""
  curve = lj.init_curve(theta, swapped, num_bends=3)
  opt = optax.adam(config.curve_learning_rate)

  @jax.jit
  def run(curve, key):
    def step(carry, k):
      c, s = carry
      ts = jax.random.uniform(k, (config.curve_num_ts,))
      g = jax.grad(lambda c: lj.curve_loss(loss_fn, c, batch, ts))(c)
      u, s = opt.update(g, s, c)
      return (optax.apply_updates(c, u), s), None
    keys = jax.random.split(key, config.curve_steps)
    return jax.lax.scan(step, (curve, opt.init(curve)), keys)[0][0]

  return run(curve, jax.random.key(7))


def main(argv):
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  ds = _common.load(config.dataset, "train", data_dir=config.get("data_dir"))
  model = MLP(features=tuple(config.features), num_classes=ds.num_classes)
  loss_fn = lj.make_loss_fn(model, mean=ds.mean, std=ds.std)
  images, labels = jnp.asarray(ds.images), jnp.asarray(ds.labels)
  batch = (images, labels)  # the whole training split: exact loss, gradient and Hessian
  theta = _common.train_adam(
    loss_fn, model.init(jax.random.key(config.seed), images[:2].astype(jnp.float32))["params"],
    images, labels, learning_rate=config.learning_rate, batch_size=config.batch_size,
    steps=config.steps, seed=config.seed)
  metric_fn = lj.make_metric_fn(model, {"train": ds, "test": _common.load(
    config.dataset, "test", data_dir=config.get("data_dir"))})
  spec = P.mlp_spec(theta)
  layer = config.layer
  ss = np.linspace(0.0, 1.0, config.num_s)
  at_theta = {"train_loss": float(metric_fn(theta)["train_loss"]),
              "grad_norm": float(optax.tree.norm(jax.grad(loss_fn)(theta, batch)))}
  flat, unravel = ravel_pytree(theta)
  ev = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), batch))(flat)))
  at_theta["smallest_eigenvalues"] = ev[:config.num_eigenvalues].tolist()
  results, paths = [], {}
  for i, j in lj.progress.progress_bar(config.pairs, desc="unit pairs", enabled=_PROGRESS.value):
    path = P.swap_path_metrics(metric_fn, theta, layer, i, j, ss, spec=spec)
    mid = P.swap_path(theta, layer, i, j, 0.5, spec=spec)
    swapped = P.swap_units(theta, layer, i, j, spec=spec)
    info = point_analysis(loss_fn, batch, theta, mid, swapped, layer, i, j, config)
    info.update(pair=[i, j], max_loss_on_swap_path=float(path["train_loss"].max()),
                midpoint_loss=float(path["train_loss"][len(ss) // 2]))
    results.append(info)
    paths[f"{i}_{j}"] = path["train_loss"]
    print(f"pair ({i},{j}): loss theta {at_theta['train_loss']:.4f}, midpoint "
          f"{info['midpoint_loss']:.4f}, |grad| {info['grad_norm']:.2e}, antisym "
          f"{info['grad_antisymmetric_norm']:.1e}, swap curvature {info['swap_curvature']:.3f}, "
          f"smallest eig {info['smallest_eigenvalues'][0]:.4f} (Lanczos "
          f"{info['lanczos_smallest']:.4f})")
  i, j = config.pairs[0]
  swapped = P.swap_units(theta, layer, i, j, spec=spec)
  curve = valley(loss_fn, batch, theta, swapped, config)
  curve_loss = np.asarray(jax.jit(jax.vmap(  # on the swap paths' grid: t = s
    lambda t: loss_fn(lj.curve_point(curve, t), batch)))(jnp.asarray(ss)))
  bend = jax.tree.map(lambda x: x[1], curve)
  bend_gap = float(jnp.max(jnp.abs(bend[layer]["kernel"][:, i] - bend[layer]["kernel"][:, j])))
  val = {"pair": [i, j], "max_loss_on_curve": float(curve_loss.max()),
         "max_loss_on_swap_path": float(paths[f"{i}_{j}"].max()),
         "bend_loss": float(loss_fn(bend, batch)), "bend_units_max_abs_difference": bend_gap}
  print(f"valley ({i},{j}): max loss on the Bezier curve {val['max_loss_on_curve']:.4f} vs "
        f"{val['max_loss_on_swap_path']:.4f} on the straight swap path; bend units differ by "
        f"{bend_gap:.1e}")
  summary = {"config": config.to_dict(), "theta": at_theta, "pairs": results, "valley": val}
  _common.write_summary(workdir, summary)
  np.savez(os.path.join(workdir, "paths.npz"), s=ss, curve_t=ss, curve_loss=curve_loss,
           **{f"swap_{k}": v for k, v in paths.items()})
  plot(ss, paths, curve_loss, (i, j), workdir)


def plot(ss, paths, curve_loss, pair, workdir):
  """``saddle_paths.png/pdf`` (every swap path) and ``saddle_valley.png/pdf`` (path vs curve)."""
  _common.plot("plot_barriers", os.path.join(workdir, "saddle_paths"), ss,
                         {f"units {k.replace('_', ', ')}": v for k, v in paths.items()},
                         ylabel="train loss",
                         xlabel=r"$s$ in $(1-s)\,\theta + s\,\sigma_{ij}(\theta)$",
                         title="Swap paths (midpoint: a permutation point)")
  _common.plot("plot_barriers", os.path.join(workdir, "saddle_valley"), ss,
                         {"straight swap path": paths[f"{pair[0]}_{pair[1]}"],
                          "trained Bezier curve": curve_loss},
                         ylabel="train loss", xlabel="s (path), t (curve)",
                         title=f"Valley from theta to its swap of units {pair}")


if __name__ == "__main__":
  _common.run(main)
