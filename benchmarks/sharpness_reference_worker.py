"""Runs tml-epfl/sharpness-vs-generalization's own sharpness code (never imports JAX).

Started by ``bench_sharpness_reference.py`` in a Python with PyTorch (``--torch_python``). Reads
the MLP's weights and the batches from an ``.npz`` (plain arrays, ``allow_pickle=False``), imports
``sharpness.py`` from the reference checkout given by ``--reference`` (nothing of it is copied
here) and calls its ``eval_APGD_sharpness`` / ``eval_average_sharpness`` for every setting of
``--settings`` (JSON list), timing each call. The reference hard-codes ``.cuda()``; on a machine
without a GPU this worker makes ``Tensor.cuda`` the identity and drops ``device="cuda"`` from
``torch.rand_like`` (both only move tensors; the arithmetic is unchanged). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import time
import types

import numpy as np


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--npz", required=True)
  p.add_argument("--reference", required=True, help="checkout of sharpness-vs-generalization")
  p.add_argument("--settings", required=True, help="JSON list of settings")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dump", default=None,
                 help="write the worst point their ascent found for every (setting, batch) to "
                      "this .npz (keys s{setting}_b{batch}_{w1,b1,w2,b2}, flax layout)")
  args = p.parse_args()

  import torch

  torch.set_num_threads(args.threads)
  if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self
    rand_like = torch.rand_like

    def rand_like_cpu(*a, **k):
      k.pop("device", None)
      return rand_like(*a, **k)

    torch.rand_like = rand_like_cpu
  if not os.path.exists(os.path.join(args.reference, "sharpness.py")):
    raise SystemExit(f"--reference={args.reference} has no sharpness.py; give a checkout of "
                     "tml-epfl/sharpness-vs-generalization.")
  sys.path.insert(0, args.reference)
  import sharpness  # the reference's module

  data = np.load(args.npz, allow_pickle=False)
  w1, b1, w2, b2 = (torch.tensor(data[k]) for k in ("w1", "b1", "w2", "b2"))
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(*w1.shape),
                              torch.nn.ReLU(), torch.nn.Linear(*w2.shape))
  with torch.no_grad():
    model[1].weight.copy_(w1.T)   # flax (in, out) -> torch (out, in)
    model[1].bias.copy_(b1)
    model[3].weight.copy_(w2.T)
    model[3].bias.copy_(b2)
  model.eval()
  xs, ys = torch.tensor(data["x"]), torch.tensor(data["y"]).long()
  batches = [(xs[i], None, ys[i], None, None) for i in range(xs.shape[0])]
  loss_f = lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="mean")

  # Their eval_APGD_sharpness keeps the best point of a restart as copy.deepcopy(state_dict())
  # and ends every restart with load_state_dict(<the original>): recording both (wrappers that
  # call the originals) recovers the best point of every batch without touching their code.
  copies, worst = [], []
  deepcopy = copy.deepcopy

  def recording_deepcopy(x, *a, **k):
    y = deepcopy(x, *a, **k)
    copies.append(y)
    return y

  load = model.load_state_dict

  def recording_load(state, *a, **k):
    if copies and state is copies[0]:
      worst.append({k2: v.detach().clone() for k2, v in copies[-1].items()})
    return load(state, *a, **k)

  sharpness.copy = types.SimpleNamespace(deepcopy=recording_deepcopy)
  model.load_state_dict = recording_load
  dump = {}

  out = []
  settings = json.loads(args.settings)
  for i, s in enumerate([settings[0], *settings]):  # the first call warms up, untimed
    torch.manual_seed(args.seed)
    copies.clear()
    worst.clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its progress
      if s["kind"] == "worst":
        vals = sharpness.eval_APGD_sharpness(
          model, batches, loss_f, None, None, rho=s["rho"], n_iters=s["n_iters"], n_restarts=1,
          step_size_mult=1.0, rand_init=False, adaptive=s["adaptive"], version="default",
          norm=s["norm"], return_output=False)
      else:
        vals = sharpness.eval_average_sharpness(
          model, batches, loss_f, n_iters=s["n_iters"], rho=s["rho"], adaptive=s["adaptive"],
          norm="l2", return_output=False)
    seconds = time.perf_counter() - start
    if i:
      out.append({**s, "value": float(vals[0]), "seconds": seconds})
      for b, state in enumerate(worst):
        for name, key in (("w1", "1.weight"), ("b1", "1.bias"), ("w2", "3.weight"),
                          ("b2", "3.bias")):
          v = state[key].numpy()
          dump[f"s{i - 1}_b{b}_{name}"] = v.T if v.ndim == 2 else v
  if args.dump:
    np.savez(args.dump, **dump)
  print(json.dumps({"torch": torch.__version__, "threads": args.threads, "results": out}))


if __name__ == "__main__":
  main()
