"""The PyTorch side of ``bench_train_vs_torch.py``, run in its own process (never imports JAX).

The JAX side writes the data, the batch order and the weights to an ``.npz`` file (plain arrays,
read with allow_pickle=False) and starts this script; each sub-command prints one JSON line.

* ``garipov-init --garipov_repo REPO --out FILE``: two PreResNets built by Garipov et al.'s own
  ``models.preresnet.PreResNetBase`` (``--depth``, seeds ``--seed`` and ``--seed + 1``), their
  state_dicts written as ``start/<key>`` and ``end/<key>`` (the endpoints of the curve).
* ``garipov-curve --garipov_repo REPO --npz FILE``: Bezier curve training with their code:
  ``curves.CurveNet(num_classes, curves.Bezier, PreResNetCurve, num_bends, fix_start=True,
  fix_end=True)``, the endpoints imported with ``import_base_parameters`` and the bends on the
  line (``init_linear``), as their ``train.py``; ``torch.optim.SGD`` over the trainable
  parameters (lr, momentum, weight_decay 0) with their ``curves.l2_regularizer(wd)``, and one
  epoch of their ``utils.train`` over a ``DataLoader`` of the npz's batches (``order``, no
  shuffling, no workers: the data are already tensors). First an agreement run: ``utils.train``
  over the first batches with the ts of the npz (``ts``: a wrapper passes ``t`` to
  ``CurveNet.forward``; ``criterion`` is wrapped to record each step's cross-entropy), then
  ``--probe_steps`` steps for every thread count of ``--thread_options`` (``torch.set_num_threads``,
  after a warm-up step), and ``--repeats`` timed epochs from the same start with the fastest,
  each t drawn by their ``CurveNet.forward``.
* ``sgd --npz FILE``: a plain PyTorch training loop of the CIFAR ResNet of ``torch_baseline.py``
  (``torch_resnet``, weights ``center/<key>`` of the npz), channels-last, ``torch.optim.SGD``
  (lr, momentum, weight decay), BatchNorm in training mode. At start-up, images/s of a few steps
  for every thread count of ``--thread_options`` and batch of ``--batch_options``; then, with the
  fastest thread count at the epoch's batch: an agreement run (the losses of the first batches),
  then ``--repeats`` timed epochs over the npz's ``order`` (each from the same start).

Their repository is exported with ``git archive`` into a temporary folder (``--garipov_repo``:
a bare git directory or a checkout; nothing of it is copied into this project) and imported from
there. Two fixes are applied to the export only, at run time: ``utils.py`` calls
``tensor.cuda(async=True)``, a syntax error since Python 3.7 (``async`` is a keyword), replaced by
``tensor.to(_DEVICE)`` (the CPU here); and where SciPy is not installed, ``curves.py``'s
``scipy.special.binom`` (binomial coefficients of the Bezier basis) is provided by an exact
integer stand-in (``math.comb``), reported in the JSON answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_baseline import gemm_peak, load_npz, torch_resnet


def _log(*a):
  print(*a, file=sys.stderr, flush=True)


def _tree(arrays: dict, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ Garipov et al.'s repository
@contextlib.contextmanager
def garipov_code(repo: str):
  """Exports `repo` (bare git dir or checkout) to a temporary folder, patches it (see the module
  docstring) and yields ``(curves, preresnet, utils, notes)`` imported from there."""
  git_dir = os.path.join(repo, ".git") if os.path.isdir(os.path.join(repo, ".git")) else repo
  if not os.path.isdir(git_dir):
    raise FileNotFoundError(f"--garipov_repo {repo!r} is not a git repository (clone "
                            "github.com/timgaripov/dnn-mode-connectivity and pass its path).")
  with tempfile.TemporaryDirectory() as tmp:
    tar = os.path.join(tmp, "repo.tar")
    with open(tar, "wb") as f:
      subprocess.run(["git", f"--git-dir={git_dir}", "archive", "HEAD"], stdout=f, check=True)
    src = os.path.join(tmp, "src")
    with tarfile.open(tar) as t:
      t.extractall(src, filter="data")
    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    notes = [f"timgaripov/dnn-mode-connectivity at {commit[:10]}"]
    path = os.path.join(src, "utils.py")
    with open(path) as f:
      text = f.read()
    if ".cuda(async=True)" in text:
      text = "_DEVICE = 'cpu'\n" + text.replace(".cuda(async=True)", ".to(_DEVICE)")
      with open(path, "w") as f:
        f.write(text)
      notes.append("utils.py: .cuda(async=True) -> .to(_DEVICE) (a Python 3.7+ syntax error)")
    try:
      import scipy.special  # noqa: F401
    except ImportError:
      special = types.ModuleType("scipy.special")

      def binom(n, k, dtype=np.float64):
        return np.array([math.comb(int(n), int(i)) for i in np.ravel(k)], dtype=dtype)

      special.binom = binom
      sys.modules["scipy"] = types.ModuleType("scipy")
      sys.modules["scipy"].special = special
      sys.modules["scipy.special"] = special
      notes.append("scipy not installed: scipy.special.binom given by math.comb (exact)")
    sys.path.insert(0, src)
    try:
      import curves
      import utils
      from models import preresnet
      yield curves, preresnet, utils, notes
    finally:
      sys.path.remove(src)
      for name in ("curves", "utils", "models", "models.preresnet", "models.vgg",
                   "models.convfc", "models.wide_resnet"):
        sys.modules.pop(name, None)


def garipov_init(args):
  import torch

  with garipov_code(args.garipov_repo) as (_, preresnet, _, notes):
    out = {}
    for name, seed in (("start", args.seed), ("end", args.seed + 1)):
      torch.manual_seed(seed)
      net = preresnet.PreResNetBase(num_classes=args.num_classes, depth=args.depth)
      for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
          out[f"{name}/{k}"] = v.detach().numpy()
    np.savez(args.out, **out)
    n = sum(p.numel() for p in net.parameters())
  print(json.dumps({"torch": torch.__version__, "params": int(n), "notes": notes}), flush=True)


def _normalized(arrays: dict, idx=None):
  import torch

  x = arrays["images"] if idx is None else arrays["images"][idx]
  x = (x.astype(np.float32) / 255.0 - arrays["mean"]) / arrays["std"]
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def garipov_curve(args):
  import torch

  torch.set_num_threads(args.threads)
  arrays = load_npz(args.npz)
  order = arrays["order"]  # (steps, batch) indices of the epoch
  steps, batch = order.shape
  x = _normalized(arrays, order.reshape(-1))
  y = torch.from_numpy(arrays["labels"][order.reshape(-1)].astype(np.int64))
  ts = [float(t) for t in arrays["ts"]]
  lr, momentum, wd = (float(arrays[k]) for k in ("lr", "momentum", "wd"))
  num_bends, depth = int(arrays["num_bends"]), int(arrays["depth"])
  num_classes = int(arrays["num_classes"])
  with garipov_code(args.garipov_repo) as (curves, preresnet, utils, notes):
    utils._DEVICE = "cpu"
    bases = []
    for name in ("start", "end"):
      base = preresnet.PreResNetBase(num_classes=num_classes, depth=depth)
      state = {k: torch.from_numpy(np.array(v)) for k, v in _tree(arrays, f"{name}/").items()}
      base.load_state_dict(state, strict=False)
      bases.append(base)

    def fresh():
      torch.manual_seed(args.seed)
      model = curves.CurveNet(num_classes, curves.Bezier, preresnet.PreResNetCurve, num_bends,
                              True, True, architecture_kwargs={"depth": depth})
      model.import_base_parameters(bases[0], 0)
      model.import_base_parameters(bases[1], num_bends - 1)
      model.init_linear()
      opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=lr,
                            momentum=momentum, weight_decay=0.0)
      return model, opt

    def loader(n_steps):
      ds = torch.utils.data.TensorDataset(x[:n_steps * batch], y[:n_steps * batch])
      return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=0)

    class FixedT(torch.nn.Module):
      """``model(input)`` with the next t of a list (the agreement run only)."""

      def __init__(self, net, t_list):
        super().__init__()
        self.net, self.t_list, self.i = net, t_list, 0

      @property
      def l2(self):
        return self.net.l2

      def forward(self, inp):
        t = torch.tensor([self.t_list[self.i]])
        self.i += 1
        return self.net(inp, t)

    losses = []

    def recording(output, target):
      loss = torch.nn.functional.cross_entropy(output, target)
      losses.append(float(loss))
      return loss

    model, opt = fresh()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if ts:  # the agreement run (skipped when the npz holds no ts)
      utils.train(loader(len(ts)), FixedT(model, ts), opt, recording, curves.l2_regularizer(wd))
    probe = {}  # thread count -> seconds of --probe_steps steps (after one warm-up step)
    for threads in args.thread_options:
      torch.set_num_threads(threads)
      model, opt = fresh()
      utils.train(loader(1), model, opt, torch.nn.functional.cross_entropy,
                  curves.l2_regularizer(wd))
      t0 = time.perf_counter()
      utils.train(loader(args.probe_steps), model, opt, torch.nn.functional.cross_entropy,
                  curves.l2_regularizer(wd))
      probe[threads] = time.perf_counter() - t0
      _log(f"probe: {threads} threads, {args.probe_steps} steps in {probe[threads]:.2f} s")
    threads = min(probe, key=probe.get)
    torch.set_num_threads(threads)
    times = []
    for _ in range(args.repeats):
      model, opt = fresh()
      data = loader(steps)
      t0 = time.perf_counter()
      res = utils.train(data, model, opt, torch.nn.functional.cross_entropy,
                        curves.l2_regularizer(wd))
      times.append(time.perf_counter() - t0)
      _log(f"garipov utils.train: {steps} steps in {times[-1]:.2f} s ({threads} threads), "
           f"loss {res['loss']:.4f}")
    torch.set_num_threads(max(args.thread_options))  # the machine's peak: every thread
    peak = gemm_peak("cpu", n=args.peak_n, min_time=args.min_time)
  print(json.dumps({"torch": torch.__version__, "threads": threads,
                    "probe_by_threads": {str(k): v for k, v in probe.items()},
                    "agreement_losses": losses, "epoch_s": times, "steps": steps,
                    "batch": batch, "trainable_params": int(trainable),
                    "epoch_loss": res["loss"], "gemm_peak": peak, "notes": notes}), flush=True)


# -------------------------------------------------------------------------- plain SGD training
class PlainTrainer:
  """ResNet, channels-last, SGD: ``out = net(x); loss = CE; zero_grad; backward; step``."""

  def __init__(self, arrays, *, lr, momentum, wd):
    import torch

    net = torch_resnet(int(arrays["depth"]), width=float(arrays["width"]),
                       num_classes=int(arrays["num_classes"]))
    self.state = {k: torch.from_numpy(np.array(v)) for k, v in _tree(arrays, "center/").items()}
    missing, unexpected = net.load_state_dict(self.state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
      raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}.")
    self.net = net.to(memory_format=torch.channels_last).train()
    self.hyper = dict(lr=lr, momentum=momentum, weight_decay=wd)
    self.x = _normalized(arrays).contiguous(memory_format=torch.channels_last)
    self.y = torch.from_numpy(arrays["labels"].astype(np.int64))
    self.reset()

  def reset(self):
    import torch

    self.net.load_state_dict(self.state, strict=False)
    self.opt = torch.optim.SGD(self.net.parameters(), **self.hyper)

  def run(self, batches) -> list:
    import torch

    losses = []
    for idx in batches:
      idx = torch.from_numpy(np.asarray(idx, np.int64))
      out = self.net(self.x[idx])
      loss = torch.nn.functional.cross_entropy(out, self.y[idx])
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      self.opt.step()
      losses.append(loss.detach())
    return [float(v) for v in losses]


def sgd(args):
  import torch

  arrays = load_npz(args.npz)
  order = arrays["order"]
  steps, batch = order.shape
  trainer = PlainTrainer(arrays, lr=float(arrays["lr"]), momentum=float(arrays["momentum"]),
                         wd=float(arrays["wd"]))
  n = trainer.x.shape[0]
  probe = {}  # images/s of args.probe_steps steps after one warm-up step
  for threads in args.thread_options:
    torch.set_num_threads(threads)
    for b in args.batch_options:
      b = min(b, n)
      batches = [np.arange(i * b, (i + 1) * b) % n for i in range(args.probe_steps + 1)]
      trainer.reset()
      trainer.run(batches[:1])
      t0 = time.perf_counter()
      trainer.run(batches[1:])
      probe[f"{threads}/{b}"] = args.probe_steps * b / (time.perf_counter() - t0)
      _log(f"probe: {threads} threads, batch {b}: {probe[f'{threads}/{b}']:.1f} images/s")
  at_batch = {t: probe[f"{t}/{min(batch, n)}"] for t in args.thread_options
              if f"{t}/{min(batch, n)}" in probe}
  threads = max(at_batch, key=at_batch.get) if at_batch else args.thread_options[-1]
  best_key = max(probe, key=probe.get)
  torch.set_num_threads(threads)
  trainer.reset()
  losses = trainer.run(order[:args.agree_steps])
  times = []
  for _ in range(args.repeats):
    trainer.reset()
    t0 = time.perf_counter()
    trainer.run(order)
    times.append(time.perf_counter() - t0)
    _log(f"plain PyTorch epoch: {steps} steps in {times[-1]:.2f} s ({threads} threads)")
  torch.set_num_threads(max(args.thread_options))  # the machine's peak: every thread
  peak = gemm_peak("cpu", n=args.peak_n, min_time=args.min_time)
  print(json.dumps({"torch": torch.__version__, "threads": threads, "probe": probe,
                    "best_probe": best_key, "agreement_losses": losses, "epoch_s": times,
                    "steps": steps, "batch": batch, "gemm_peak": peak,
                    "params": int(sum(p.numel() for p in trainer.net.parameters()))}),
        flush=True)


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("command", choices=["garipov-init", "garipov-curve", "sgd"])
  p.add_argument("--npz")
  p.add_argument("--out")
  p.add_argument("--garipov_repo")
  p.add_argument("--depth", type=int, default=20)
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--thread_options", type=lambda s: [int(v) for v in s.split(",")],
                 default=[1, 2])
  p.add_argument("--batch_options", type=lambda s: [int(v) for v in s.split(",")],
                 default=[64, 128, 256])
  p.add_argument("--probe_steps", type=int, default=2)
  p.add_argument("--agree_steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=1, help="timed epochs (>= 1)")
  p.add_argument("--peak_n", type=int, default=2048)
  p.add_argument("--min_time", type=float, default=0.3)
  args = p.parse_args(argv)
  try:
    {"garipov-init": garipov_init, "garipov-curve": garipov_curve, "sgd": sgd}[
      args.command](args)
  except Exception as e:  # one JSON line with the reason; the JAX side reports it
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    raise


if __name__ == "__main__":
  main()
