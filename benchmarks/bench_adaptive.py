"""Adaptive surfaces and paths against dense grids: points used and the largest loss deviation.

Workload: a ResNet-8 and an MLP trained briefly on digits (two seeds each, `training.train`),
the train loss on the first `--eval_subset` training examples (the centre's BatchNorm
statistics). For each model:

* surface: two filter-normalised random directions (``ignore="biasbn"``), a dense
  ``--dense x --dense`` grid on [-1, 1]^2 (`surface_grid`) against `adaptive_surface` on the same
  box; the adaptive interpolant (`AdaptiveResult.to_grid`, cubic and linear) is compared with the
  dense values at every dense grid point where the dense loss is below `--loss_cap`;
* path: the straight line between the two seeds' models, `--dense_path` alphas on [-0.5, 1.5]
  (`linear_path`) against `adaptive_path`.

Targets: at most 15 % of the dense grid's points (20 % of the path's) for a largest deviation of
0.01 in loss where the loss is below 5. Writes docs/figures/adaptive_<model>.png (the dense and
the adaptive contour plots side by side, the adaptive samples drawn) and appends its result block
to benchmarks/RESULTS.md.

Run: ``python benchmarks/bench_adaptive.py`` (appends to RESULTS.md), ``--tiny`` for a
seconds-long smoke run (not recorded).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax import plotting  # noqa: E402
from landscape_jax.core import adaptive  # noqa: E402
from landscape_jax.methods import training  # noqa: E402
from landscape_jax.plotting import common  # noqa: E402

FIGURES = os.path.join(os.path.dirname(_HERE), "docs", "figures")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (not recorded)")
  p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  p.add_argument("--models", default="resnet8,mlp")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--eval_subset", type=int, default=512)
  p.add_argument("--dense", type=int, default=101)
  p.add_argument("--dense_path", type=int, default=401)
  p.add_argument("--tol", type=float, default=0.01)
  p.add_argument("--initial", type=int, default=17)
  p.add_argument("--max_level", type=int, default=4)
  p.add_argument("--path_initial", type=int, default=17)
  p.add_argument("--path_max_level", type=int, default=5)
  p.add_argument("--budget", type=float, default=0.15, help="surface point budget (fraction)")
  p.add_argument("--path_budget", type=float, default=0.20, help="path point budget (fraction)")
  p.add_argument("--loss_cap", type=float, default=5.0)
  p.add_argument("--figures", default=FIGURES)
  args = p.parse_args(argv)
  if args.tiny:
    args.models, args.epochs, args.eval_subset = "mlp", 1, 64
    args.dense, args.dense_path, args.initial, args.max_level = 21, 41, 5, 2
    args.path_initial, args.path_max_level, args.tol = 5, 2, 0.05
    args.figures = tempfile.mkdtemp(prefix="bench_adaptive_")
  return args


def train_pair(name: str, args, workdir: str):
  train_ds, test_ds = lj.load("digits", "train"), lj.load("digits", "test")
  model = lj.get_model(name, num_classes=10)
  out = []
  for seed in (0, 1):
    config = dict(
      model=name, seed=seed, num_epochs=args.epochs, batch_size=64, learning_rate=0.05,
      weight_decay=5e-4, schedule="cosine", momentum=0.9, nesterov=True)
    state, records = training.train(model, train_ds, test_ds, config=config,
                                    workdir=os.path.join(workdir, f"{name}_{seed}"),
                                    progress=False)
    out.append((state, records[-1]))
  return model, train_ds, out


def deviation(approx, dense, cap):
  keep = np.isfinite(dense) & (dense < cap)
  return float(np.max(np.abs(approx[keep] - dense[keep]))) if keep.any() else float("nan")


def figure(path, xs, ys, dense, approx, samples, *, title, n_dense):
  fig = common.new_figure((11.0, 4.6))
  levels = common.contour_levels(np.ma.masked_invalid(dense), None)
  ax1, ax2 = fig.subplots(1, 2)
  plotting.plot_contour(xs, ys, dense, levels=levels, label="train loss", ax=ax1)
  ax1.set_title(f"dense {len(xs)} x {len(ys)}: {n_dense} points", fontsize=10)
  plotting.plot_contour(xs, ys, approx, levels=levels, label="train loss", ax=ax2,
                        samples=samples)
  ax2.set_title(f"adaptive: {len(samples)} points (dots)", fontsize=10)
  fig.suptitle(title, fontsize=11)
  return plotting.save(fig, path, ("png",), dpi=110)


def run_model(name, args, workdir, rows, path_rows, files):
  t0 = time.perf_counter()
  model, train_ds, pair = train_pair(name, args, workdir)
  t_train = time.perf_counter() - t0
  (sa, ra), (sb, _) = pair
  bs = sa.batch_stats if sa.batch_stats else None
  data = train_ds.subset(slice(0, args.eval_subset or None))
  metric_fn = lj.make_metric_fn(model, {"train": data}, batch_stats=bs, batch_size=256)
  d1, d2 = lj.random_directions(jax.random.key(7), sa.params, num=2, norm="filter",
                                ignore="biasbn")
  xs = ys = np.linspace(-1.0, 1.0, args.dense)
  t = time.perf_counter()
  dense = lj.surface_grid(metric_fn, sa.params, (d1, d2), xs, ys,
                          engine=lj.EngineOptions(progress=False))["train_loss"]
  t_dense = time.perf_counter() - t
  n_dense = dense.size
  budget = int(args.budget * n_dense)
  t = time.perf_counter()
  res = adaptive.adaptive_surface(metric_fn, sa.params, (d1, d2), (-1, 1), (-1, 1),
                                  refinement=lj.Refinement(tol=args.tol, max_points=budget,
                                                           initial=args.initial,
                                                           max_level=args.max_level,
                                                           key="train_loss",
                                                           max_value=args.loss_cap),
                                  engine=lj.EngineOptions(progress=False))
  t_adapt = time.perf_counter() - t
  cubic = res.to_grid(xs, ys, keys=["train_loss"])["train_loss"]
  linear = res.to_grid(xs, ys, keys=["train_loss"], method="linear")["train_loss"]
  dev_c, dev_l = (deviation(a, dense, args.loss_cap) for a in (cubic, linear))
  rows.append([name, f"{ra['test_accuracy']:.3f}", f"{np.nanmin(dense):.3g}",
               f"{np.nanmax(dense):.3g}", n_dense, res.num_points,
               f"{100 * res.num_points / n_dense:.1f}", dev_c, dev_l,
               len(res.history) - 1, str(res.converged), t_dense, t_adapt])
  files += figure(os.path.join(args.figures, f"adaptive_{name}"), xs, ys, dense, cubic,
                  res.coords, n_dense=n_dense,
                  title=f"{name} on digits, train loss ({args.eval_subset} examples), "
                        f"tol {args.tol}")
  # path: straight line between the two seeds' models
  alphas = np.linspace(-0.5, 1.5, args.dense_path)
  t = time.perf_counter()
  dense_p = lj.linear_path(metric_fn, sa.params, sb.params, alphas,
                           engine=lj.EngineOptions(progress=False))["train_loss"]
  t_dense_p = time.perf_counter() - t
  budget_p = int(args.path_budget * alphas.size)
  t = time.perf_counter()
  resp = adaptive.adaptive_path(metric_fn, sa.params, sb.params, (-0.5, 1.5),
                                refinement=lj.Refinement(tol=args.tol, max_points=budget_p,
                                                         initial=args.path_initial,
                                                         max_level=args.path_max_level,
                                                         key="train_loss", max_value=args.loss_cap),
                                engine=lj.EngineOptions(progress=False))
  t_adapt_p = time.perf_counter() - t
  cub_p = resp.to_grid(alphas, keys=["train_loss"])["train_loss"]
  lin_p = resp.to_grid(alphas, keys=["train_loss"], method="linear")["train_loss"]
  path_rows.append([name, f"{np.nanmin(dense_p):.3g}", f"{np.nanmax(dense_p):.3g}",
                    alphas.size, resp.num_points, f"{100 * resp.num_points / alphas.size:.1f}",
                    deviation(cub_p, dense_p, args.loss_cap),
                    deviation(lin_p, dense_p, args.loss_cap), str(resp.converged), t_dense_p,
                    t_adapt_p])
  print(f"{name}: trained in {t_train:.0f} s; surface {rows[-1]}; path {path_rows[-1]}",
        flush=True)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  start = time.perf_counter()
  rows, path_rows, files = [], [], []
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.models.split(","):
      run_model(name, args, workdir, rows, path_rows, files)
  total = time.perf_counter() - start
  surf = C.markdown_table(
    ["model", "test acc", "min loss", "max loss", "dense points", "adaptive points",
     "% of dense", f"max dev (cubic), loss < {args.loss_cap:g}",
     f"max dev (linear), loss < {args.loss_cap:g}", "rounds", "converged", "dense s",
     "adaptive s"], rows)
  path = C.markdown_table(
    ["model", "min loss", "max loss", "dense alphas", "adaptive points", "% of dense",
     f"max dev (cubic), loss < {args.loss_cap:g}", f"max dev (linear), loss < {args.loss_cap:g}",
     "converged", "dense s", "adaptive s"], path_rows)

  def verdict(rs, frac, dev_col, pct_col, what):
    out = []
    for r in rs:
      ok_pts = float(r[pct_col]) <= 100 * frac + 1e-9
      ok_dev = r[dev_col] <= 0.01
      out.append(f"{r[0]} {what}: points <= {100 * frac:.0f} % {'met' if ok_pts else 'NOT met'}, "
                 f"max deviation <= 0.01 {'met' if ok_dev else 'NOT met'} "
                 f"({r[dev_col]:.3g})")
    return out

  lines = verdict(rows, args.budget, 7, 6, "surface") + verdict(path_rows, args.path_budget, 6,
                                                                5, "path")
  body = (f"{C.format_info(info)}\n\nDigits, models trained {args.epochs} epochs (SGD, Nesterov, "
          f"cosine; two seeds), train loss on the first {args.eval_subset} training examples. "
          f"Surface: filter-normalised directions on [-1, 1]^2, dense {args.dense} x {args.dense} "
          f"grid vs `adaptive_surface(refinement=Refinement(tol={args.tol}, "
          f"initial={args.initial}, max_level={args.max_level}, max_value={args.loss_cap:g}, "
          f"max_points={args.budget:.0%} of the dense grid))`; deviations of "
          "`AdaptiveResult.to_grid` (cubic: Clough-Tocher, linear: the per-cell bilinear "
          f"interpolant) at the dense grid points where the dense loss is < {args.loss_cap:g}.\n\n"
          f"{surf}\n\nPath: the straight line between the two seeds on [-0.5, 1.5], "
          f"{args.dense_path} alphas vs `adaptive_path(refinement=Refinement(tol={args.tol}, "
          f"initial={args.path_initial}, max_level={args.path_max_level}))`.\n\n{path}\n\n"
          "Targets (max dev of the default cubic interpolant): " + "; ".join(lines) +
          f".\n\nFigures: {', '.join(os.path.relpath(f, os.path.dirname(_HERE)) for f in files)}."
          f"\n\nTotal benchmark time {total:.0f} s.")
  print(body)
  if not (args.tiny or args.no_record):
    C.append_results("bench_adaptive: adaptive surfaces and paths vs dense grids", body)
  return {"surface": rows, "path": path_rows, "files": files}


if __name__ == "__main__":
  main()
