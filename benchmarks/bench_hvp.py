"""Cost of one Hessian-vector product relative to one gradient (target: HVP <= 3x a gradient).

Times, side by side and interleaved, the jitted gradient ``jax.grad(loss_fn)`` and the jitted
forward-over-reverse HVP ``jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]`` (as
`landscape_jax.hvp` computes it), plus the flattened HVP that Lanczos calls (`hessian._operator`),
on one digits-sized batch, call after call in alternation (medians over `--repeats` rounds; the
ratio of the fastest calls is printed too). Prints the ratio and appends a dated line (machine,
versions) to ``benchmarks/RESULTS.md``.

In multiply-adds a forward-over-reverse HVP costs about 3 gradients for dense and convolutional
layers (each matmul of the gradient gains two tangent terms), so ~3x is the expected ratio for
compute-bound models; small memory-bound models come in lower.

  PYTHONPATH=. python benchmarks/bench_hvp.py --model=mlp --batch_size=128
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import landscape_jax as lj
from landscape_jax.core import hessian as hs

_MODEL = flags.DEFINE_string("model", "mlp", "Model name for lj.get_model (e.g. mlp, resnet20).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Examples per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls of each function (median reported).")
_RESULTS = flags.DEFINE_string("results", os.path.join(os.path.dirname(__file__), "RESULTS.md"),
                               "Markdown file that gets one appended line ('' to skip).")


def _interleaved_times(fns, args, *, repeats):
  """Calls every function once per round, round after round, so that load hits all alike."""
  for fn, a in zip(fns, args, strict=True):
    jax.block_until_ready(fn(*a))  # compile + warm up
  times = np.zeros((repeats, len(fns)))
  for r in range(repeats):
    for i, (fn, a) in enumerate(zip(fns, args, strict=True)):
      t = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times[r, i] = time.perf_counter() - t
  return times


def main(argv):
  del argv
  data = lj.load("digits", "train")
  model = lj.get_model(_MODEL.value, num_classes=data.num_classes)
  x, y = data.images[:_BATCH.value], data.labels[:_BATCH.value]
  variables = model.init(jax.random.key(0), jnp.zeros((1, *data.image_shape)))
  params, batch_stats = variables["params"], variables.get("batch_stats")
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=batch_stats)
  batch = (jnp.asarray(x), jnp.asarray(y))
  v = optax.tree.random_like(jax.random.key(1), params)

  grad = jax.jit(lambda f, p, b: jax.grad(f)(p, b))
  hvp = jax.jit(lambda f, p, b, u: jax.jvp(lambda q: jax.grad(f)(q, b), (p,), (u,))[1])

  @jax.jit
  def flat_hvp(f, p, b, u):
    op = hs.flat_hvp_operator(f, p, b, None)
    return op.matvec(u)

  # Lanczos with linearize=True: the gradient is linearised once, each product re-runs the
  # tangent pass only (the linear function is a pytree of residuals, passed as an argument).
  linear = jax.jit(lambda f, p, b: hs.flat_hvp_operator(f, p, b, None, linearize=True).matvec)(
    loss_fn, params, batch)
  lin_hvp = jax.jit(lambda op, u: op(u))

  u = jax.random.normal(jax.random.key(2), (lj.trees.num_params(params),))
  times = _interleaved_times(
    (grad, hvp, flat_hvp, lin_hvp),
    ((loss_fn, params, batch), (loss_fn, params, batch, v), (loss_fn, params, batch, u),
     (linear, u)),
    repeats=_REPEATS.value)
  np.testing.assert_allclose(lin_hvp(linear, u), flat_hvp(loss_fn, params, batch, u),
                             rtol=1e-3, atol=1e-4)
  t_grad, t_hvp, t_flat, t_lin = np.median(times, axis=0)
  best = times.min(axis=0)
  device = jax.devices()[0]
  machine = f"{device.platform}:{device.device_kind} ({platform.machine()}, {os.cpu_count()} cpus)"
  num = lj.trees.num_params(params)
  print(f"model={_MODEL.value} params={num} batch={_BATCH.value} on {machine}")
  print(f"grad      {t_grad * 1e3:8.3f} ms")
  print(f"hvp       {t_hvp * 1e3:8.3f} ms   ratio hvp/grad = {t_hvp / t_grad:.2f} "
        f"(fastest calls: {best[1] / best[0]:.2f})")
  print(f"flat hvp  {t_flat * 1e3:8.3f} ms   ratio flat/grad = {t_flat / t_grad:.2f}")
  print(f"linearized hvp {t_lin * 1e3:8.3f} ms   ratio = {t_lin / t_grad:.2f} "
        "(hessian_eigenvalues(..., linearize=True), after one linearisation)")
  if _RESULTS.value:
    line = (f"- {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC bench_hvp: "
            f"{_MODEL.value} ({num} params), digits batch {_BATCH.value}: grad "
            f"{t_grad * 1e3:.3f} ms, hvp {t_hvp * 1e3:.3f} ms (ratio {t_hvp / t_grad:.2f}), "
            f"flattened hvp {t_flat * 1e3:.3f} ms (ratio {t_flat / t_grad:.2f}), linearized hvp "
            f"{t_lin * 1e3:.3f} ms (ratio {t_lin / t_grad:.2f}), medians of "
            f"{_REPEATS.value} interleaved calls; {machine}; "
            f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}\n")
    new = not os.path.exists(_RESULTS.value)
    with open(_RESULTS.value, "a") as fh:
      if new:
        fh.write("# Benchmark results\n\nOne dated line per run, appended by the scripts.\n\n")
      fh.write(line)
    print(f"appended to {_RESULTS.value}")


if __name__ == "__main__":
  app.run(main)
