"""Error-controlled surface of a trained convolutional network against the exact surface.

Workload: a ResNet-8 (``lj.get_model("resnet8")``, BatchNorm) trained briefly on the embedded
digits (`training.train`, SGD with Nesterov momentum, cosine schedule), evaluated on a large
split made of noisy copies of the training digits (Gaussian pixel noise, ``--images`` of them:
the split is what the tolerance saves on), two filter-normalised random directions
(``ignore="biasbn"``), a ``--grid x --grid`` surface on [-1, 1]^2. Three runs of
``lj.surface_grid(engine=lj.EngineOptions(map_mode="map"))``:

* exact: ``lj.make_metric_fn`` (one pass over the whole split per point);
* plain: ``lj.make_error_controlled_metric_fn(tol=...)`` (growing random subsets);
* anchored: the same with ``anchors=lj.anchor_plane(..., stride=...)`` (anchored control
  variates interpolating the anchors' per-example losses, or their logits with
  ``--covariate=logits``; the anchors' exact passes are part of the timed work);
* anchored + rtol: the same with ``rtol=...`` too: the standard error target is
  ``tol + rtol * |loss|``, absolute near the minimum and relative where the loss is large.

Each run is compiled on a warm-up grid first (not timed). Printed and recorded: seconds, speed-up
over exact, the largest deviation of the loss from the exact surface (absolute, in units of
the target ``tol + rtol |exact loss|`` and, near the minimum where the exact loss is below 1, in
units of ``tol``), mean examples used per point, points that used the whole split. Targets: >= 10x
faster than exact with a largest deviation <= 3 targets.

Run: ``python benchmarks/bench_error_control.py`` (about half an hour on 2 cores; appends to
RESULTS.md), ``--tiny`` for a smoke run (not recorded).
"""

from __future__ import annotations

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
from landscape_jax.methods import training  # noqa: E402


def noisy_split(base: lj.Dataset, n: int, *, noise: float, seed: int = 0) -> lj.Dataset:
  """`n` copies of `base`'s images drawn with replacement, plus Gaussian pixel noise (uint8)."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(base), n)
  imgs = base.images[idx].astype(np.float32)
  noisy = np.clip(imgs + rng.normal(0, noise, imgs.shape), 0, 255).astype(np.uint8)
  return lj.Dataset(images=noisy, labels=base.labels[idx], num_classes=base.num_classes,
                    mean=base.mean, std=base.std, name=f"{base.name}-noisy", split="train")


def train_model(args, workdir: str):
  train_ds, test_ds = lj.load("digits", "train"), lj.load("digits", "test")
  model = lj.get_model(args.model, num_classes=10, width=args.width)
  config = dict(
    model=args.model, seed=args.seed, num_epochs=args.epochs, batch_size=64, learning_rate=0.05,
    weight_decay=5e-4, schedule="cosine", momentum=0.9, nesterov=True)
  state, records = training.train(model, train_ds, test_ds, config=config, workdir=workdir,
                                  progress=False)
  return model, train_ds, state, records[-1]


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet8")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--images", type=int, default=30000)
  p.add_argument("--noise", type=float, default=24.0, help="pixel noise std (0-255 scale)")
  p.add_argument("--grid", type=int, default=31)
  p.add_argument("--tol", type=float, default=0.01)
  p.add_argument("--rtol", type=float, default=0.01, help="relative part (anchored + rtol)")
  p.add_argument("--covariate", default="loss", choices=("logits", "loss"),
                 help="what the anchors interpolate")
  p.add_argument("--variants", default="plain,anchored,anchored+rtol",
                 help="comma-separated subset of plain, anchored, anchored+rtol")
  p.add_argument("--batch", type=int, default=250)
  p.add_argument("--stride", type=int, default=5, help="anchors on every k-th grid line")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.tiny:
    args.width, args.epochs, args.images, args.grid = 0.5, 1, 1500, 5
    args.batch, args.stride, args.tol = 100, 2, 0.05
  return C.finish_args(args)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    model, base, state, last = train_model(args, tmp)
    t_train = time.perf_counter() - t
  params = state.params
  bs = state.batch_stats if state.batch_stats else None
  print(f"{args.model} trained {args.epochs} epochs in {t_train:.0f} s: test accuracy "
        f"{last.get('test_accuracy', float('nan')):.3f}", flush=True)
  data = noisy_split(base, args.images, noise=args.noise, seed=args.seed)
  dirs = tuple(lj.random_directions(jax.random.key(args.seed + 1), params, num=2, norm="filter",
                                    ignore="biasbn"))
  g = np.linspace(-1, 1, args.grid)
  engine = lj.EngineOptions(map_mode="map", chunk_size=min(args.grid ** 2, 64), progress=False)

  def exact():
    return lj.make_metric_fn(model, data, batch_stats=bs, batch_size=args.batch)

  def plain():
    return lj.make_error_controlled_metric_fn(model, data, tol=args.tol, batch_stats=bs,
                                              batch_size=args.batch, progress=False)

  def anchored(rtol=0.0):  # the anchors' exact passes are part of the timed work
    return lj.make_error_controlled_metric_fn(
      model, data, tol=args.tol, rtol=rtol, batch_stats=bs, batch_size=args.batch,
      progress=False, anchors=lj.anchor_plane(params, dirs, g, g, stride=args.stride,
                                              covariate=args.covariate))

  n_anchor = len(lj.error_control.anchor_axis(g, stride=args.stride)) ** 2
  label = (f"anchored ({n_anchor} anchors, stride {args.stride}, {args.covariate}), "
           f"tol {args.tol}")
  chosen = {v.strip() for v in args.variants.split(",")}
  known = {"plain": (f"plain, tol {args.tol}", plain, 0.0),
           "anchored": (label, anchored, 0.0),
           "anchored+rtol": (f"{label} + rtol {args.rtol}",
                             lambda: anchored(args.rtol), args.rtol)}
  if not chosen <= set(known):
    raise SystemExit(f"--variants: unknown {sorted(chosen - set(known))}; from {sorted(known)}")
  variants = {"exact": exact} | {known[k][0]: known[k][1] for k in known if k in chosen}
  rtols = {known[k][0]: known[k][2] for k in known}
  res = {}
  for name, make in variants.items():
    lj.surface_grid(make(), params, dirs, g[:2], g[:1], engine=engine)  # compile (not timed)
    t = time.perf_counter()
    out = lj.surface_grid(make(), params, dirs, g, g, engine=engine)
    res[name] = (out, time.perf_counter() - t)
    print(f"  {name}: {res[name][1]:.1f} s", flush=True)
  ex, t_ex = res.pop("exact")
  rows, verdicts, summary = [], [], {}
  low = ex["loss"] < 1.0  # near the minimum: the absolute tolerance rules there
  for name, (est, t_est) in res.items():
    dev = np.abs(est["loss"] - ex["loss"])
    target = args.tol + rtols[name] * np.abs(ex["loss"])
    n_used = est["num_examples"]
    speed = t_ex / t_est
    worst = float((dev / target).max())
    rows.append([name, t_ex, t_est, speed, float(dev.max()), worst,
                 float(np.median(dev / target)),
                 float(dev[low].max() / args.tol) if low.any() else float("nan"),
                 float(n_used.mean()), int(np.sum(n_used >= len(data)))])
    fast, close = speed >= 10, worst <= 3
    verdicts.append(f"{name}: speed-up >= 10 {'met' if fast else 'NOT met'} ({speed:.1f}x), "
                    f"max deviation <= 3 targets {'met' if close else 'NOT met'} "
                    f"({worst:.2f} targets)")
    summary[name] = {"speedup": speed, "max_dev": float(dev.max()), "max_dev_targets": worst,
                     "mean_examples": float(n_used.mean())}
  loss = ex["loss"]
  lines = [
    C.format_info(info), "",
    f"{args.model} (width {args.width}) trained {args.epochs} epochs on digits (test accuracy "
    f"{last.get('test_accuracy', float('nan')):.3f}, {t_train:.0f} s); evaluation split: "
    f"{args.images} noisy copies of the training digits (pixel noise std {args.noise}); "
    f"{args.grid} x {args.grid} grid on [-1, 1]^2, filter-normalised directions; exact loss "
    f"from {loss.min():.3g} to {loss.max():.3g} (median {np.median(loss):.3g}); batches of at "
    f"most {args.batch}; all runs `surface_grid` with `map_mode='map'`, compiled first.",
    "",
    C.markdown_table(
      ["variant", "exact s", "estimated s", "speed-up", "max abs dloss", "max dloss / target",
       "median dloss / target", f"max dloss / tol where loss < 1 ({int(low.sum())} points)",
       "mean examples/point", "points using the whole split"],
      rows),
    "", "target = tol + rtol * |exact loss| (tol alone without rtol).",
    "", "Targets: " + "; ".join(verdicts) + ".",
    "", C.total_line(t_start),
  ]
  C.report(lines, title="bench_error_control.py: error control on a trained ResNet-8",
           info=info, record=args.record)
  return summary


if __name__ == "__main__":
  main()
