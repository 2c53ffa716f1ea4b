r"""Prints the numbers of docs/reproductions.md from the run directories of reproduce_digits.sh.

  python scripts/reproduction_numbers.py --runs=runs

For every training run: the final test error. For every 1-D comparison (Li et al. Fig. 3/4): the
train loss at the centre and at alpha = +-0.5, the rise mean(L(-0.5), L(0.5)) - L(0) and the
curvature 2a of a quadratic fit L ~ a alpha^2 + b alpha + c over |alpha| <= 0.25 (a sharpness
indicator). For every 2-D comparison (Li et al. Fig. 5/6): the centre's train loss, the mean train
loss over the inner square |alpha|, |beta| <= 0.5 and the fraction of the whole grid whose train
loss stays below 1 (the width of the basin). Then the summaries of the curve, FGE, Hessian and
trajectory runs. Missing runs are skipped.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from landscape_jax.core import store

TRAIN_RUNS = ("digits_mlp_bs32", "digits_mlp_bs1024", "digits_mlp_wd0", "digits_mlp_bs1024_wd0",
              "digits_mlp_bs1024_e400",
              "digits_resnet20", "digits_resnet20_noshort", "digits_resnet56",
              "digits_resnet56_noshort", "digits_wrn20_2")
ONE_D = ("cmp_batch", "cmp_batch_e400", "cmp_batch_wd0", "cmp_weight_decay", "cmp_normalization")
TWO_D = ("cmp_shortcuts20", "cmp_shortcuts56", "cmp_width")


def _grid(meta_cfg, key):
  lo, hi, n = meta_cfg[key]
  return np.linspace(float(lo), float(hi), int(n))


def _read(path):
  st = store.read(path)
  return st.values, st.config


def _axis(cfg, name):
  for key in (name, f"{name}s"):
    if key in cfg:
      return np.asarray(cfg[key], float)
  return None


def one_d(path, xs):
  vals, _ = _read(path)
  loss = np.asarray(vals["train_loss"], float)
  i0 = int(np.argmin(np.abs(xs)))
  ip, im = int(np.argmin(np.abs(xs - 0.5))), int(np.argmin(np.abs(xs + 0.5)))
  near = np.abs(xs) <= 0.25 + 1e-9
  a = np.polyfit(xs[near], loss[near], 2)[0]
  acc = np.asarray(vals["test_accuracy"], float)
  return {"L(0)": loss[i0], "L(-.5)": loss[im], "L(+.5)": loss[ip],
          "rise@.5": 0.5 * (loss[im] + loss[ip]) - loss[i0], "curv": 2 * a,
          "test err(0) %": 100 * (1 - acc[i0]), "L(-1)": loss[0], "L(+1)": loss[-1]}


def two_d(path, xs, ys):
  vals, _ = _read(path)
  loss = np.asarray(vals["train_loss"], float)
  i0, j0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
  inner = (np.abs(xs)[:, None] <= 0.5 + 1e-9) & (np.abs(ys)[None, :] <= 0.5 + 1e-9)
  acc = np.asarray(vals["test_accuracy"], float)
  return {"L(0,0)": loss[i0, j0], "mean L inner": float(loss[inner].mean()),
          "max L inner": float(loss[inner].max()), "frac L<1": float(np.mean(loss < 1.0)),
          "max L": float(np.nanmax(loss)), "test err(0) %": 100 * (1 - acc[i0, j0])}


def _fmt(d):
  return ", ".join(f"{k} {v:.4g}" if isinstance(v, float | np.floating) else f"{k} {v}"
                   for k, v in d.items())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  runs = parser.parse_args().runs

  print("## training runs (final epoch)")
  for name in TRAIN_RUNS:
    path = os.path.join(runs, name, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      recs = [json.loads(line) for line in f if line.strip()]
    r = recs[-1]
    print(f"{name}: epochs {r['epoch']}, train loss {r['train_loss']:.4f}, "
          f"test error {100 * (1 - r['test_accuracy']):.2f} %")

  for kind, names in (("1-D", ONE_D), ("2-D", TWO_D)):
    print(f"\n## {kind} filter-normalised comparisons (train loss)")
    for name in names:
      summ = os.path.join(runs, name, "summary.json")
      if not os.path.exists(summ):
        continue
      with open(summ) as f:
        cfg = json.load(f)["config"]
      xs = _grid(cfg, "x")
      for label in sorted(os.listdir(os.path.join(runs, name))):
        st = os.path.join(runs, name, label, "store")
        if not os.path.isdir(st):
          continue
        res = one_d(st, xs) if kind == "1-D" else two_d(st, xs, _grid(cfg, "y"))
        print(f"{name} / {label}: {_fmt(res)}")

  for name in ("connect_digits", "fge_digits", "align_digits", "saddle_digits", "hessian_digits",
               "trajectory_digits"):
    summ = os.path.join(runs, name, "summary.json")
    if not os.path.exists(summ):
      continue
    with open(summ) as f:
      s = json.load(f)
    s.pop("config", None)
    print(f"\n## {name}")
    print(json.dumps(s, indent=1, default=str)[:4000])


if __name__ == "__main__":
  main()
