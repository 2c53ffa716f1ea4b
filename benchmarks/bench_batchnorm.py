"""Training-mode BatchNorm on the CPU: flax's, the library's (`models.normalization`), PyTorch's.

In the compiled training epochs XLA's BatchNorm and elementwise fusions took about a quarter of a
step (``bench_epoch_profile.py``). This times BatchNorm followed by ReLU in training mode (batch
statistics), forward and backward (the gradients of the input, scale and bias for a random
cotangent), at each activation shape of ``--model``'s BatchNorm layers (found by intercepting
``flax.linen.BatchNorm`` in one training-mode pass at batch ``--batch``), as:

* flax: ``flax.linen.BatchNorm`` differentiated by JAX (what the zoo ran before);
* the formula in jnp: the same function written out in ``jax.numpy``, differentiated by JAX;
* landscape-jax: ``models.normalization.batch_norm_train`` (what the zoo's ``BatchNorm`` runs in
  training mode), whose backward pass is the analytic formula with two sums and one elementwise
  pass (its module docstring); checked equal to flax's (float32 rounding);
* PyTorch: ``torch.nn.BatchNorm2d`` and ReLU, channels-last, forward and backward in its own
  process on the same arrays with its fastest thread count (1 or 2); its ``dx`` is compared;
* one pass: ``2 x`` (a read and a write of the activations), the unit the others are also
  given in.

Each is the best of ``--calls`` calls, in ``--rounds`` rounds (JAX's variants interleaved, then
the PyTorch process), best of the rounds. Summed over the model's layers this gives each
variant's BatchNorm time per training step. Both sides keep freed memory for the next call
(``keep_freed_memory``; glibc's variables for the PyTorch process) unless
``--no-keep_freed_memory``, so that no call maps its outputs afresh (a compiled epoch does not).

Run: ``python benchmarks/bench_batchnorm.py`` (about a minute on 2 cores; appends to
RESULTS.md; PyTorch from ``$LANDSCAPE_JAX_TORCH_PYTHON`` or this interpreter, ``--no-torch``
without it). ``--tiny``: ResNet-8 at batch 8, not recorded.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.backends.cpu import malloc  # noqa: E402
from landscape_jax.models import normalization  # noqa: E402

FLAX, OURS = "flax (JAX autodiff)", "landscape-jax (models.normalization)"

WORKER = """
import json, sys, time
import numpy as np, torch
arrays = dict(np.load(sys.argv[1], allow_pickle=False))
out_path, calls, eps = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
shapes = sorted({k.split(":")[0] for k in arrays})
def timed(fn):
  fn()
  best = float("inf")
  for _ in range(calls):
    t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
  return best
res, dxs = {"threads": {}}, {}
for threads in (1, 2):
  torch.set_num_threads(threads)
  for s in shapes:
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # NHWC memory = channels-last
    x = to(arrays[s + ":x"]).requires_grad_(True)
    dy = to(arrays[s + ":dy"])
    bn = torch.nn.BatchNorm2d(x.shape[1], eps=eps, momentum=0.1)
    with torch.no_grad():
      bn.weight.copy_(torch.from_numpy(arrays[s + ":gamma"]))
      bn.bias.copy_(torch.from_numpy(arrays[s + ":beta"]))
    def step():
      x.grad = None; bn.weight.grad = None; bn.bias.grad = None
      torch.relu(bn(x)).backward(dy)
    t = timed(step)
    if t < res.get(s, float("inf")):
      res[s] = t; res["threads"][s] = threads
      dxs[s] = x.grad.permute(0, 2, 3, 1).contiguous().numpy()
np.savez(out_path, **dxs)
print(json.dumps(res), flush=True)
"""


def _key(shape) -> str:
  """An activation shape as the worker's arrays and the table name it: ``128x32x32x16``."""
  return "x".join(map(str, shape))


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="preresnet20")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--calls", type=int, default=30)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--keep_freed_memory", action=argparse.BooleanOptionalAction, default=True)
  args = p.parse_args(argv)
  if args.tiny:
    # the smoke test runs in the test process: do not change its malloc
    args.model, args.batch, args.calls, args.rounds = "resnet8", 8, 3, 1
    args.keep_freed_memory = False
  return C.finish_args(args)


def batchnorm_layers(model_name: str, batch: int) -> collections.Counter:
  """How many of the model's BatchNorm layers see each input shape in a training-mode pass."""
  model = lj.get_model(model_name, num_classes=10)
  x = jnp.zeros((batch, 32, 32, 3))
  variables = model.init(jax.random.key(0), x[:1])
  seen = collections.Counter()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      seen[tuple(args[0].shape)] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  return seen


def variants(eps: float):
  """``{name: f(x, gamma, beta, ct) -> (y, dx, dgamma, dbeta)}``, jitted."""
  def flax_bn(x, gamma, beta):
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=eps)
    stats = {"mean": jnp.zeros_like(gamma), "var": jnp.ones_like(gamma)}
    y, _ = bn.apply({"params": {"scale": gamma, "bias": beta}, "batch_stats": stats}, x,
                    mutable=["batch_stats"])
    return jax.nn.relu(y)

  def jnp_bn(x, gamma, beta):
    axes = (0, 1, 2)
    mu = jnp.mean(x, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mu), 0.0)
    return jax.nn.relu((x - mu) * (jax.lax.rsqrt(var + eps) * gamma) + beta)

  def ours(x, gamma, beta):
    return jax.nn.relu(normalization.batch_norm_train(x, gamma, beta, eps)[0])

  def with_grads(f):
    def run(x, gamma, beta, ct):
      y, vjp = jax.vjp(f, x, gamma, beta)
      return (y, *vjp(ct))
    return jax.jit(run)

  return {FLAX: with_grads(flax_bn),
          "the formula in jnp (JAX autodiff)": with_grads(jnp_bn),
          OURS: with_grads(ours),
          "one pass (2 x)": jax.jit(lambda x, gamma, beta, ct: 2.0 * x)}


def main(argv=None):
  args = parse_args(argv)
  if args.keep_freed_memory:
    malloc.keep_freed_memory()  # before JAX's first computation
  info = C.announce_machine()
  t_start = time.perf_counter()
  eps = 1e-5
  layers = batchnorm_layers(args.model, args.batch)
  fns = variants(eps)
  inputs, arrays = {}, {}
  for i, shape in enumerate(sorted(layers, key=lambda s: -np.prod(s))):
    ks = jax.random.split(jax.random.key(i), 4)
    c = shape[-1]
    x = 2.0 * jax.random.normal(ks[0], shape) + 0.3
    gamma = 1.0 + 0.1 * jax.random.normal(ks[1], (c,))
    beta = 0.1 * jax.random.normal(ks[2], (c,))
    ct = jax.random.normal(ks[3], shape)
    inputs[shape] = (x, gamma, beta, ct)
    key = _key(shape)
    arrays.update({f"{key}:x": x, f"{key}:gamma": gamma, f"{key}:beta": beta, f"{key}:dy": ct})
  outs = {s: {n: f(*a) for n, f in fns.items()} for s, a in inputs.items()}
  agree = {}
  for s, o in outs.items():
    ref, ours = o[FLAX], o[OURS]
    agree[s] = max(C.max_rel_diff(b, a) for a, b in zip(ref, ours, strict=True))
  best = {s: dict.fromkeys(fns, float("inf")) for s in inputs}
  torch_best, torch_threads, torch_agree, torch_note = {}, {}, {}, ""
  run_torch = args.torch
  if run_torch:
    ok, why = C.torch_installed()
    if not ok:
      run_torch, torch_note = False, why
  with tempfile.TemporaryDirectory() as tmp:
    npz = C.save_npz(os.path.join(tmp, "bn.npz"), arrays)
    for r in range(args.rounds):
      for s, a in inputs.items():
        for name, f in fns.items():
          best[s][name] = min(best[s][name],
                              C.best_time(lambda f=f, a=a: f(*a), repeats=args.calls))
      if run_torch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if args.keep_freed_memory:
          env.update(malloc.GLIBC_SETTINGS)
        dx_path = os.path.join(tmp, f"dx{r}.npz")
        out = C.run_json([C.torch_python(), "-c", WORKER, npz, dx_path, str(args.calls),
                          str(eps)], name="the PyTorch BatchNorm worker", env=env)
        with np.load(dx_path, allow_pickle=False) as dxs:
          for s in inputs:
            key = _key(s)
            if out[key] < torch_best.get(s, float("inf")):
              torch_best[s], torch_threads[s] = out[key], out["threads"][key]
              torch_agree[s] = C.max_rel_diff(dxs[key], outs[s][FLAX][1])
      print(f"round {r}: " + ", ".join(f"{s}: " + " ".join(f"{v * 1e3:.3f}" for v in b.values())
                                      for s, b in best.items()), flush=True)
  names = [n for n in fns if not n.startswith("one pass")]
  columns = names + (["PyTorch"] if torch_best else [])  # the timed BatchNorms
  header = ["activations (N, H, W, C)", "layers per step", *(f"{n} ms" for n in columns),
            "one pass ms", *(f"{n} in passes" for n in columns)]
  rows, totals = [], collections.Counter()
  for s in inputs:
    n = layers[s]
    times = [best[s][k] for k in names] + ([torch_best[s]] if torch_best else [])
    unit = best[s]["one pass (2 x)"]
    rows.append([_key(s), n, *(t * 1e3 for t in times), unit * 1e3,
                 *(f"{t / unit:.1f}" for t in times)])
    for k, t in zip(columns, times, strict=True):
      totals[k] += n * t
    totals["one pass"] += n * unit
  rows.append(["all BatchNorm layers of a step", sum(layers.values()),
               *(totals[k] * 1e3 for k in columns), totals["one pass"] * 1e3,
               *(f"{totals[k] / totals['one pass']:.1f}" for k in columns)])
  flax_total, ours_total = totals[FLAX], totals[OURS]
  lines = [C.format_info(info), "",
           f"{args.model}'s BatchNorm layers (training mode, batch {args.batch}, float32): "
           "BatchNorm then ReLU, forward and backward (gradients of the input, scale and bias "
           f"for a random cotangent); best of {args.calls} calls in each of {args.rounds} rounds, "
           "best round. Freed memory kept for the next call on both sides: "
           f"{args.keep_freed_memory}.", "",
           C.markdown_table(header, rows), "",
           f"- landscape-jax's against flax's: {flax_total / ours_total:.2f}x as fast over "
           "a step's layers; largest relative difference of (y, dx, dgamma, dbeta) "
           f"{max(agree.values()):.1e}."]
  if torch_best:
    lines.append(f"- PyTorch: {totals['PyTorch'] / flax_total:.2f}x "
                 "flax's time over a step's layers (threads "
                 f"{sorted(set(torch_threads.values()))}); its dx against flax's: largest "
                 f"relative difference {max(torch_agree.values()):.1e}.")
  elif torch_note:
    lines.append(f"- PyTorch not run: {torch_note}.")
  lines += ["- Command: `python benchmarks/bench_batchnorm.py`.", "", C.total_line(t_start)]
  C.report(lines, title="bench_batchnorm.py: training-mode BatchNorm, flax's, the library's and "
           "PyTorch's", info=info, record=args.record)
  return {"layers": dict(layers), "best": best, "torch": torch_best, "agree": agree,
          "torch_agree": torch_agree, "totals": dict(totals)}


if __name__ == "__main__":
  main()
