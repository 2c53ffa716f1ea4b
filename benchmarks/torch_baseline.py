"""The PyTorch side of the benchmarks, run in its own process (this module never imports JAX).

The JAX-side scripts write the weights, directions and data to an ``.npz`` file (plain arrays,
read with allow_pickle=False) and start this script as a subprocess, so that PyTorch's thread pool
and allocator do not share a process with XLA's. Sub-commands:

* ``serve --npz FILE``: W1 surface baselines (``bench_w1.py``, ``bench_accelerator.py``). Reads
  commands from stdin, one per line, and answers each with one JSON line on stdout:

  - ``naive``: the strategy of Li et al.'s reference code: ``model.eval()``, per grid point
    ``p.copy_(c + x d1 + y d2)`` into every parameter, then loss and accuracy over the split in
    ``DataLoader`` batches of 128, NCHW, under ``torch.no_grad()``;
  - ``best``: what a PyTorch user would write for speed: BatchNorm folded into the convolutions
    (``w' = w gamma / sqrt(var + eps)``, recomputed from the perturbed weights at every point),
    channels-last tensors, ``torch.inference_mode()``, the data held as one tensor cut into the
    batch size measured fastest at start-up (``--best_batch 0``), and
    ``torch.compile`` where it was measured faster than eager at start-up (``--compile``);
  - ``best_bf16`` (with ``--bf16``): the same tuned form under
    ``torch.autocast(device, dtype=torch.bfloat16)`` (PyTorch's mixed precision: convolutions
    and the linear layer in bfloat16 with float32 accumulation; their outputs are bfloat16, the
    loss is computed from the logits cast back to float32), with its own batch size and its own
    eager / ``torch.compile`` choice measured at start-up;
  - ``peak``: the best fp32 and bf16 GEMM GFLOP/s of ``(n, n) @ (n, n)`` products (``gflops``,
    ``bf16_gflops``);
  - ``quit``.

  Each answer holds ``seconds`` (wall time over the points, after a warm-up point), per-point
  ``loss`` and ``accuracy``. A first line ``{"ready": ...}`` reports the set-up (torch version,
  threads, whether torch.compile was kept and why).
* ``conv --shapes JSON``: GFLOP/s of ``torch.nn.functional.conv2d`` per convolution shape
  (``bench_conv_layers.py``), NCHW and channels-last.
* ``pyhessian --npz FILE``: PyHessian's top eigenvalues (power iteration) and Hutchinson trace of
  the model on one batch, with the number of Hessian-vector products (``bench_pyhessian.py``);
  with ``--products N`` only the time of N products after its setup, per product.

``--threads`` sets ``torch.set_num_threads`` (default: all cores). ``--device cuda`` runs on the
GPU (then ``best`` skips ``torch.compile`` unless asked for).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _log(*a):
  print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- model
def torch_resnet(depth: int, *, width: float = 1.0, num_classes: int = 10, in_channels: int = 3):
  """The bundled CIFAR ResNet (landscape_jax.models.resnet) in PyTorch, with the same names."""
  import torch

  tnn = torch.nn

  def scaled(c):
    return max(1, int(round(c * width)))

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cout)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(cout)
      self.project = stride != 1 or cin != cout
      if self.project:
        self.shortcut_conv = tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.shortcut_bn = tnn.BatchNorm2d(cout)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      r = self.shortcut_bn(self.shortcut_conv(x)) if self.project else x
      return torch.relu(y + r)

  class ResNet(tnn.Module):
    def __init__(self):
      super().__init__()
      n = (depth - 2) // 6
      cin = scaled(16)
      self.conv1 = tnn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cin)
      self.blocks = []
      for s, c in enumerate((16, 32, 64)):
        for b in range(n):
          name = f"layer{s + 1}_{b}"
          setattr(self, name, Block(cin, scaled(c), 2 if (s > 0 and b == 0) else 1))
          self.blocks.append(name)
          cin = scaled(c)
      self.linear = tnn.Linear(cin, num_classes)

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv1(x)))
      for name in self.blocks:
        x = getattr(self, name)(x)
      return self.linear(x.mean((2, 3)))

  return ResNet()


def load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _tree(arrays: dict, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def build_net(arrays: dict, device: str):
  """The ResNet of the npz (``depth``, ``width``, ``center/<torch name>`` arrays), eval mode."""
  import torch

  images = arrays["images"]
  net = torch_resnet(int(arrays["depth"]), width=float(arrays["width"]),
                     num_classes=int(arrays["num_classes"]), in_channels=images.shape[-1])
  state = {k: torch.from_numpy(np.array(v)) for k, v in _tree(arrays, "center/").items()}
  missing, unexpected = net.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}.")
  return net.to(device).eval()


def nchw_images(arrays: dict, device: str):
  import torch

  x = (arrays["images"].astype(np.float32) / 255.0 - arrays["mean"]) / arrays["std"]
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def _sync(device):
  import torch

  if device == "cuda":
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ W1 server
class Naive:
  """Li et al.'s reference strategy (see the module docstring)."""

  def __init__(self, arrays, device, batch_size=128):
    import torch

    self.device = device
    self.net = build_net(arrays, device)
    self.params = dict(self.net.named_parameters())
    self.names = list(self.params)
    self.c0 = {k: p.detach().clone() for k, p in self.params.items()}
    self.d1 = {k: torch.from_numpy(v).to(device) for k, v in _tree(arrays, "d1/").items()}
    self.d2 = {k: torch.from_numpy(v).to(device) for k, v in _tree(arrays, "d2/").items()}
    labels = torch.from_numpy(arrays["labels"].astype(np.int64)).to(device)
    self.loader = torch.utils.data.DataLoader(
      torch.utils.data.TensorDataset(nchw_images(arrays, device), labels),
      batch_size=batch_size, shuffle=False)
    self.criterion = torch.nn.CrossEntropyLoss()

  def point(self, x, y):
    import torch

    with torch.no_grad():
      for k in self.names:  # set_weights: w + x d1 + y d2
        self.params[k].copy_(self.c0[k] + float(x) * self.d1[k] + float(y) * self.d2[k])
      loss, correct, n = 0.0, 0, 0
      for xb, yb in self.loader:
        out = self.net(xb)
        loss += self.criterion(out, yb).item() * yb.shape[0]
        correct += (out.argmax(1) == yb).sum().item()
        n += yb.shape[0]
    return loss / n, correct / n


class Best:
  """BatchNorm folded, channels-last, inference mode, optionally torch.compile (see docstring)."""

  def __init__(self, arrays, device, *, batch_size=250, compile_mode="auto",
               autocast: bool = False):
    import torch

    self.device = device
    self.autocast = autocast  # torch.autocast(device, bfloat16) around the forward pass
    net = build_net(arrays, device)
    self.c0 = {k: p.detach().clone() for k, p in net.named_parameters()}
    self.buffers = {k: b.detach().clone() for k, b in net.named_buffers()}
    self.d1 = {k: torch.from_numpy(v).to(device) for k, v in _tree(arrays, "d1/").items()}
    self.d2 = {k: torch.from_numpy(v).to(device) for k, v in _tree(arrays, "d2/").items()}
    # (conv, bn) pairs by name; the folded net has biased convolutions and no BatchNorm
    self.pairs = []
    for name, mod in net.named_modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        conv = name.replace("bn", "conv")
        self.pairs.append((conv, name, mod.eps))
    for conv, bn, _ in self.pairs:
      parent_name, _, leaf = conv.rpartition(".")
      parent = net.get_submodule(parent_name) if parent_name else net
      old = getattr(parent, leaf)
      new = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride,
                            old.padding, bias=True).to(device)
      setattr(parent, leaf, new)
      bparent_name, _, bleaf = bn.rpartition(".")
      bparent = net.get_submodule(bparent_name) if bparent_name else net
      setattr(bparent, bleaf, torch.nn.Identity())
    self.net = net.to(memory_format=torch.channels_last).eval()
    self.targets = dict(self.net.named_parameters())
    self.x = nchw_images(arrays, device).contiguous(memory_format=torch.channels_last)
    self.y = torch.from_numpy(arrays["labels"].astype(np.int64)).to(device)
    self.compiled = None
    self.compile_note = "not tried"
    self.eager = self.net
    self.batch_note = f"batch {batch_size} (given)"
    if batch_size > 0:
      self.batch_size = batch_size
    else:  # the fastest of a few batch sizes (eager, best of 2 points each)
      times = {}
      for b in (128, 250, 500, 1000):
        self.batch_size = min(b, self.x.shape[0])
        self.point(0.0, 0.0)
        times[self.batch_size] = min(self._timed(0.1, 0.1) for _ in range(2))
      self.batch_size = min(times, key=times.get)
      self.batch_note = (f"batch {self.batch_size} (fastest eager of "
                         + ", ".join(f"{b}: {t:.3f} s" for b, t in times.items()) + ")")
    want = compile_mode == "on" or (compile_mode == "auto" and device == "cpu")
    if want:
      self.compile_note = self._try_compile()

  def _try_compile(self) -> str:
    import torch

    t = time.perf_counter()
    try:
      compiled = torch.compile(self.eager, dynamic=False)
      self.net = compiled
      self.point(0.0, 0.0)  # compiles (full batches and the remainder: two graphs)
      t_compile = time.perf_counter() - t
    except Exception as e:  # any compile failure falls back to eager, reported
      self.net = self.eager
      return f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); eager"
    timings = {}
    for label, net in (("compiled", compiled), ("eager", self.eager)):
      self.net = net
      self.point(0.1, 0.1)
      best = float("inf")
      for _ in range(3):
        s = time.perf_counter()
        self.point(0.2, -0.1)
        best = min(best, time.perf_counter() - s)
      timings[label] = best
    keep = timings["compiled"] < timings["eager"]
    self.net = compiled if keep else self.eager
    self.compiled = keep
    return (f"torch.compile {'kept' if keep else 'dropped'}: {timings['compiled']:.3f} s/point "
            f"compiled vs {timings['eager']:.3f} eager (compile {t_compile:.0f} s)")

  def _timed(self, x, y) -> float:
    t = time.perf_counter()
    self.point(x, y)
    return time.perf_counter() - t

  def point(self, x, y):
    import torch

    x, y = float(x), float(y)
    with torch.inference_mode():
      p = {k: self.c0[k] + x * self.d1[k] + y * self.d2[k] for k in self.c0}
      for conv, bn, eps in self.pairs:
        scale = p[f"{bn}.weight"] / torch.sqrt(self.buffers[f"{bn}.running_var"] + eps)
        self.targets[f"{conv}.weight"].copy_(p[f"{conv}.weight"] * scale[:, None, None, None])
        self.targets[f"{conv}.bias"].copy_(p[f"{bn}.bias"]
                                           - self.buffers[f"{bn}.running_mean"] * scale)
      self.targets["linear.weight"].copy_(p["linear.weight"])
      self.targets["linear.bias"].copy_(p["linear.bias"])
      loss = torch.zeros((), device=self.device)
      correct = torch.zeros((), device=self.device, dtype=torch.int64)
      for s in range(0, self.x.shape[0], self.batch_size):
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
          out = self.net(self.x[s:s + self.batch_size])
        out = out.float()
        yb = self.y[s:s + self.batch_size]
        loss += torch.nn.functional.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
      n = self.x.shape[0]
      return loss.item() / n, correct.item() / n


def gemm_peak(device: str, *, n: int = 2048, repeats: int = 5, min_time: float = 0.0,
              dtype: str = "float32") -> float:
  """Best GFLOP/s of 4 chained ``(n, n) @ (n, n)`` products in `dtype` ("float32" or
  "bfloat16": bf16 operands, PyTorch's oneDNN / cuBLAS bf16 GEMM) over >= `repeats` calls and
  `min_time` seconds."""
  import torch

  dt = getattr(torch, dtype)
  a = torch.randn(n, n, device=device).to(dt)
  b = (torch.randn(n, n, device=device) / n ** 0.5).to(dt)
  best = float("inf")
  start, calls = time.perf_counter(), 0
  while calls <= repeats or (time.perf_counter() - start < min_time and calls < 200):
    calls += 1
    _sync(device)
    t = time.perf_counter()
    c = a
    for _ in range(4):
      c = c @ b
    _sync(device)
    best = min(best, time.perf_counter() - t)
  return 4 * 2 * n ** 3 / best / 1e9


def time_points(fn, coords, device) -> dict:
  fn(*coords[0])  # warm-up (first-call costs are not part of the rate)
  _sync(device)
  t = time.perf_counter()
  vals = [fn(x, y) for x, y in coords]
  _sync(device)
  seconds = time.perf_counter() - t
  return {"seconds": seconds, "points": len(coords), "loss": [v[0] for v in vals],
          "accuracy": [v[1] for v in vals]}


def serve(args):
  import torch

  arrays = load_npz(args.npz)
  coords = [tuple(map(float, c)) for c in arrays["coords"]]
  t = time.perf_counter()
  naive = Naive(arrays, args.device, batch_size=args.naive_batch)
  best = Best(arrays, args.device, batch_size=args.best_batch, compile_mode=args.compile)
  bf16 = (Best(arrays, args.device, batch_size=args.best_batch, compile_mode=args.compile,
               autocast=True) if args.bf16 else None)
  ready = {"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": args.device, "compile": best.compile_note,
           "setup_s": time.perf_counter() - t, "naive_batch": args.naive_batch,
           "best_batch": best.batch_size, "best_batch_note": best.batch_note,
           "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported",
                                       lambda: False)()) if args.device == "cpu" else None}
  if bf16 is not None:
    ready.update({"bf16_compile": bf16.compile_note, "bf16_batch": bf16.batch_size,
                  "bf16_batch_note": bf16.batch_note})
  print(json.dumps(ready), flush=True)
  for line in sys.stdin:
    cmd = line.strip()
    if cmd == "quit" or not cmd:
      break
    if cmd == "naive":
      out = time_points(naive.point, coords, args.device)
    elif cmd == "best":
      out = time_points(best.point, coords, args.device)
    elif cmd == "best_bf16" and bf16 is not None:
      out = time_points(bf16.point, coords, args.device)
    elif cmd == "peak":
      out = {"gflops": gemm_peak(args.device, n=args.peak_n),
             "bf16_gflops": gemm_peak(args.device, n=args.peak_n, dtype="bfloat16")}
    else:
      out = {"error": f"unknown command {cmd!r}"}
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------- convolutions
def conv_layers(args):
  """GFLOP/s of F.conv2d per shape: ``[{"n","h","w","c","o","k","stride","pad"}]``."""
  import torch

  shapes = json.loads(args.shapes)
  out = []
  for s in shapes:
    n, h, w, c, o, k, st, pad = (s[key] for key in ("n", "h", "w", "c", "o", "k", "stride", "pad"))
    ho, wo = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
    flops = 2.0 * n * ho * wo * o * c * k * k
    row = {}
    for fmt in ("nchw", "channels_last"):
      x = torch.randn(n, c, h, w, device=args.device)
      wt = torch.randn(o, c, k, k, device=args.device)
      if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
      with torch.inference_mode():
        for _ in range(2):
          torch.nn.functional.conv2d(x, wt, stride=st, padding=pad)
        best = float("inf")
        start = time.perf_counter()
        reps = 0
        while reps < args.repeats or (time.perf_counter() - start < args.min_time and reps < 200):
          _sync(args.device)
          t = time.perf_counter()
          torch.nn.functional.conv2d(x, wt, stride=st, padding=pad)
          _sync(args.device)
          best = min(best, time.perf_counter() - t)
          reps += 1
      row[fmt] = flops / best / 1e9
    out.append(row)
  print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "layers": out, "gemm_peak": gemm_peak(args.device, n=args.peak_n,
                                                          min_time=args.min_time)}),
        flush=True)


# ----------------------------------------------------------------------------------- PyHessian
def pyhessian_run(args):
  import torch

  try:
    import pyhessian
    import pyhessian.hessian
  except ImportError as e:
    print(json.dumps({"error": f"pyhessian not installed ({e})"}), flush=True)
    return
  ph = sys.modules["pyhessian.hessian"]  # the module (the package re-exports the class by name)
  arrays = load_npz(args.npz)
  net = build_net(arrays, args.device)
  x = nchw_images(arrays, args.device)
  y = torch.from_numpy(arrays["labels"].astype(np.int64)).to(args.device)
  count = {"hvp": 0}
  original = ph.hessian_vector_product

  def counted(*a, **k):
    count["hvp"] += 1
    return original(*a, **k)

  ph.hessian_vector_product = counted
  out = {"torch": torch.__version__, "pyhessian": getattr(pyhessian, "__version__", "0.1"),
         "threads": torch.get_num_threads()}
  with torch.no_grad():
    out["loss"] = float(torch.nn.functional.cross_entropy(net(x), y))
  torch.manual_seed(args.seed)
  t = time.perf_counter()
  comp = ph.hessian(net, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=args.device == "cuda")
  out["setup_s"] = time.perf_counter() - t  # one forward and create_graph backward
  if args.products:  # only time products, as its power iteration runs them
    v = [torch.randn_like(p) for p in comp.params]
    t = time.perf_counter()
    for _ in range(args.products):
      hv = ph.hessian_vector_product(comp.gradsH, comp.params, v)
      norm = torch.sqrt(sum((h * h).sum() for h in hv))
      v = [h / norm for h in hv]
    out["product_s"] = (time.perf_counter() - t) / args.products
    print(json.dumps(out), flush=True)
    return
  t = time.perf_counter()
  evals, _ = comp.eigenvalues(maxIter=args.max_iter, tol=args.tol, top_n=args.top_n)
  out["eig_s"] = time.perf_counter() - t
  out["eig_hvps"] = count["hvp"]
  out["eigenvalues"] = [float(v) for v in evals]
  count["hvp"] = 0
  t = time.perf_counter()
  samples = comp.trace(maxIter=args.max_iter, tol=args.tol)
  out["trace_s"] = time.perf_counter() - t
  out["trace_hvps"] = count["hvp"]
  out["trace_samples"] = [float(v) for v in samples]
  print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("command", choices=["serve", "conv", "pyhessian"])
  p.add_argument("--npz")
  p.add_argument("--shapes")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--device", default="cpu")
  p.add_argument("--naive_batch", type=int, default=128)
  p.add_argument("--best_batch", type=int, default=0,
                 help="batch of the `best` form; 0: the fastest of 128, 250, 500, 1000")
  p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                 help="torch.compile in `best`: auto = try on the CPU, keep if faster")
  p.add_argument("--bf16", action="store_true",
                 help="serve: also set up `best_bf16` (the best form under bfloat16 autocast)")
  p.add_argument("--peak_n", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--min_time", type=float, default=0.3)
  p.add_argument("--tol", type=float, default=1e-3)
  p.add_argument("--max_iter", type=int, default=100)
  p.add_argument("--top_n", type=int, default=3)
  p.add_argument("--products", type=int, default=0,
                 help="pyhessian: only time this many Hessian-vector products (per product)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  import torch

  torch.set_num_threads(args.threads)
  {"serve": serve, "conv": conv_layers, "pyhessian": pyhessian_run}[args.command](args)


if __name__ == "__main__":
  main()
