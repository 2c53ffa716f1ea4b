"""PyTorch side of ``bench_conv_layers.py --backward`` (run in its own process, torch only).

For each convolution shape (JSON list of ``{"n","h","w","c","o","k","stride","pad"}``), channels-
last float32: the best time of the forward ``F.conv2d``, the backward data and the backward weights
(``torch.ops.aten.convolution_backward`` with output masks (True, False, False) and (False, True,
False)); then one whole SGD training step (forward in training mode, cross-entropy, backward,
``torch.optim.SGD`` momentum 0.9, weight decay 5e-4) of the CIFAR ResNet-`depth` at batch `n` of
the first shape, channels-last. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def best_time(fn, *, repeats: int, min_time: float) -> float:
  fn()
  fn()
  best, start, reps = float("inf"), time.perf_counter(), 0
  while reps < repeats or (time.perf_counter() - start < min_time and reps < 200):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
    reps += 1
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--shapes", required=True)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--min_time", type=float, default=0.5)
  p.add_argument("--depth", type=int, default=20)
  args = p.parse_args(argv)
  import torch

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from torch_baseline import torch_resnet

  torch.set_num_threads(args.threads)
  cl = torch.channels_last
  layers = []
  for s in json.loads(args.shapes):
    n, h, w, c, o, k, st, pad = (s[key] for key in ("n", "h", "w", "c", "o", "k", "stride", "pad"))
    ho, wo = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
    x = torch.randn(n, c, h, w).contiguous(memory_format=cl)
    wt = torch.randn(o, c, k, k).contiguous(memory_format=cl)
    dy = torch.randn(n, o, ho, wo).contiguous(memory_format=cl)
    common = (None, [st, st], [pad, pad], [1, 1], False, [0, 0], 1)
    with torch.no_grad():
      row = {
        "fwd": best_time(lambda x=x, wt=wt, st=st, pad=pad: torch.nn.functional.conv2d(
          x, wt, stride=st, padding=pad), repeats=args.repeats, min_time=args.min_time),
        "bwd_data": best_time(lambda x=x, wt=wt, dy=dy, common=common:
                              torch.ops.aten.convolution_backward(dy, x, wt, *common,
                                                                  [True, False, False]),
                              repeats=args.repeats, min_time=args.min_time),
        "bwd_weights": best_time(lambda x=x, wt=wt, dy=dy, common=common:
                                 torch.ops.aten.convolution_backward(dy, x, wt, *common,
                                                                     [False, True, False]),
                                 repeats=args.repeats, min_time=args.min_time)}
    layers.append(row)

  n0 = json.loads(args.shapes)[0]["n"]
  torch.manual_seed(0)
  net = torch_resnet(args.depth).to(memory_format=cl)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(n0, 3, 32, 32).contiguous(memory_format=cl)
  y = torch.randint(0, 10, (n0,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()

  out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "layers": layers,
         "step": best_time(step, repeats=args.repeats, min_time=2 * args.min_time)}
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
