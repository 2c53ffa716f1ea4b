"""GFLOP/s of each distinct convolution of ResNet-20 at batch 128: XLA, oneDNN and PyTorch.

The shapes come from the model itself (the ``conv_general_dilated`` equations of its inference
jaxpr at batch 128: stride, padding, channels, image size), each listed once with how often the
network uses it. For each: XLA's convolution (``lax.conv_general_dilated``, NHWC x HWIO, jitted),
landscape-jax's oneDNN convolution (``onednn.conv``, the CPU default of ``make_metric_fn``; its
implementation name, e.g. ``brgconv:avx512_core``, is printed) and PyTorch's
``torch.nn.functional.conv2d`` in its own process (``torch_baseline.py conv``; NCHW and
channels-last, inference mode). Best call over at least ``--min_time`` seconds of calls (XLA and
oneDNN in turn, so that load from other processes hits both alike) after a warm-up; FLOPs
``2 x N x H_out x W_out x C_out x C_in x KH x KW``. The peak is that of ``bench_w1.py``: the best
fp32 GEMM of the run over JAX and PyTorch (measured the same way: best call over ``--min_time``
seconds), and the CPU's theoretical fp32 FMA peak.

Run: ``python benchmarks/bench_conv_layers.py`` (about a minute; appends to RESULTS.md),
``--tiny`` for a smoke run (batch 8, not recorded).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.adapters.evaluation import inference_apply  # noqa: E402
from landscape_jax.backends.cpu import onednn, onednn_build  # noqa: E402


def conv_shapes(model_name: str, *, batch: int, image_size: int = 32, width: float = 1.0):
  """Distinct convolutions of the model's inference pass: ``{shape dict: count}`` (NHWC/HWIO)."""
  model = lj.get_model(model_name, num_classes=10, width=width)
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:2], train=False))
  jaxpr = jax.make_jaxpr(inference_apply(model))(variables, x).jaxpr
  counts = collections.Counter()

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        n, c, h, w = (lhs[d] for d in dn.lhs_spec)  # lhs_spec: (batch, feature, spatial...)
        o, i, kh, kw = (rhs[d] for d in dn.rhs_spec)  # (out feat, in feat, spatial...)
        (pt, pb), (pl, pr) = eqn.params["padding"]
        if not (pt == pb == pl == pr) or kh != kw or i != c:
          raise ValueError(f"unexpected convolution {eqn}")
        sh, sw = eqn.params["window_strides"]
        counts[(n, h, w, c, o, kh, sh, pt)] += 1
      for sub in C._sub_jaxprs(eqn.params):
        walk(sub)

  walk(jaxpr)
  keys = ("n", "h", "w", "c", "o", "k", "stride", "pad")
  return [(dict(zip(keys, (int(v) for v in s), strict=True)), n) for s, n in counts.items()]


def flops_of(s) -> float:
  ho = (s["h"] + 2 * s["pad"] - s["k"]) // s["stride"] + 1
  wo = (s["w"] + 2 * s["pad"] - s["k"]) // s["stride"] + 1
  return 2.0 * s["n"] * ho * wo * s["o"] * s["c"] * s["k"] ** 2


def time_interleaved(fns: dict, *args, repeats: int, min_time: float) -> dict[str, float]:
  """Best time of each jitted ``fn(*args)``, the functions called in turn (after two warm-up
  calls each) for at least `repeats` rounds and `min_time` seconds per function: a burst of load
  from other processes hits them alike, and the best call approximates the uncontended speed."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
  best = dict.fromkeys(fns, float("inf"))
  start, n = time.perf_counter(), 0
  while n < repeats or (time.perf_counter() - start < min_time * len(fns) and n < 200):
    for k, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[k] = min(best[k], time.perf_counter() - t)
    n += 1
  return best


def gemm_peak(*, n: int, min_time: float) -> float:
  """Best fp32 GFLOP/s of a jitted (n, n) @ (n, n), best over `min_time` seconds of calls."""
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32) / np.sqrt(n)
  mm = jax.jit(jnp.dot)
  t = time_interleaved({"gemm": mm}, a, b, repeats=5, min_time=min_time)["gemm"]
  return 2 * n ** 3 / t / 1e9


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--min_time", type=float, default=1.0,
                 help="seconds of repeated calls per measurement (the best call counts)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  args = p.parse_args(argv)
  if args.tiny:
    args.batch, args.repeats, args.min_time = 8, 2, 0.0
  return C.finish_args(args)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  theo, theo_note = C.theoretical_fp32_peak()
  peak_n = 512 if args.tiny else 2048
  jax_peak = gemm_peak(n=peak_n, min_time=args.min_time)
  use_onednn = jax.default_backend() == "cpu" and onednn_build.available()
  shapes = conv_shapes(args.model, batch=args.batch)
  rows, out = [], []
  key = jax.random.key(0)
  for s, count in shapes:
    k1, k2 = jax.random.split(jax.random.fold_in(key, len(out)))
    x = jax.random.normal(k1, (s["n"], s["h"], s["w"], s["c"]), jnp.float32)
    w = jax.random.normal(k2, (s["k"], s["k"], s["c"], s["o"]), jnp.float32)
    pad = ((s["pad"], s["pad"]),) * 2
    xla = jax.jit(lambda x, w, s=s, pad=pad: jax.lax.conv_general_dilated(
      x, w, (s["stride"],) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    fl = flops_of(s)
    fns = {"xla": xla}
    r = {"shape": s, "count": count, "flops": fl}
    if use_onednn:
      dnn = jax.jit(lambda x, w, s=s: onednn.conv(x, w, strides=s["stride"], padding=s["pad"]))
      ref = np.asarray(xla(x, w))
      diff = float(np.max(np.abs(np.asarray(dnn(x, w)) - ref)) / max(1.0, np.max(np.abs(ref))))
      if diff > 1e-4:
        raise AssertionError(f"oneDNN and XLA convolutions differ by {diff:.2e} for {s}.")
      fns["onednn"] = dnn
      r["impl"] = onednn.implementation(x.shape, w.shape, strides=s["stride"], padding=s["pad"])
    for k, t in time_interleaved(fns, x, w, repeats=args.repeats, min_time=args.min_time).items():
      r[k] = fl / t / 1e9
    out.append(r)
    print(f"  {s}: x{count} {fl / 1e9:.2f} GFLOP  XLA {r['xla']:.1f}  oneDNN "
          f"{r.get('onednn', float('nan')):.1f} GFLOP/s ({r.get('impl', '-')})", flush=True)

  notes = []
  torch_peak = None
  have_torch, why = C.torch_installed()
  if args.torch and have_torch:
    ans = C.run_torch("conv", "--shapes", json.dumps([r["shape"] for r in out]), "--repeats",
                      str(args.repeats), "--min_time", str(args.min_time), "--peak_n",
                      str(peak_n), "--threads", str(os.cpu_count()))
    for r, t in zip(out, ans["layers"], strict=True):
      r["torch_nchw"], r["torch_cl"] = t["nchw"], t["channels_last"]
    torch_peak = ans["gemm_peak"]
    notes.append(f"PyTorch {ans['torch']} in its own process, {ans['threads']} threads, "
                 "inference_mode.")
  elif args.torch:
    print(why, flush=True)
    notes.append(why + ".")
  best_gemm = max(jax_peak, torch_peak or 0.0)

  def pct(v):
    return f"{v:.0f} ({100 * v / best_gemm:.0f} %)" if v == v else "-"

  header = ["conv (N, H, W, C -> O, k, stride)", "uses", "GFLOP", "XLA GFLOP/s (% GEMM)",
            "oneDNN GFLOP/s (% GEMM)", "oneDNN kernel", "torch NCHW", "torch channels-last"]
  for r in out:
    s = r["shape"]
    rows.append([f"{s['n']}x{s['h']}x{s['w']}x{s['c']} -> {s['o']}, {s['k']}x{s['k']}, "
                 f"s{s['stride']}", r["count"], r["flops"] / 1e9, pct(r["xla"]),
                 pct(r.get("onednn", float("nan"))), r.get("impl", "-"),
                 pct(r.get("torch_nchw", float("nan"))), pct(r.get("torch_cl", float("nan")))])
  tot = {}
  for k in ("xla", "onednn", "torch_nchw", "torch_cl"):
    if all(k in r for r in out):  # the whole network's convolutions: FLOP-weighted time
      secs = sum(r["count"] * r["flops"] / (r[k] * 1e9) for r in out)
      tot[k] = sum(r["count"] * r["flops"] for r in out) / secs / 1e9
  rows.append(["all convolutions of one forward pass (FLOP-weighted)", sum(r["count"] for r in out),
               sum(r["count"] * r["flops"] for r in out) / 1e9, pct(tot.get("xla", np.nan)),
               pct(tot.get("onednn", np.nan)), "", pct(tot.get("torch_nchw", np.nan)),
               pct(tot.get("torch_cl", np.nan))])
  load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
  lines = [C.format_info(info), "",
           f"Distinct convolutions of {args.model} at batch {args.batch} (from its inference "
           f"jaxpr), float32; best call of >= {args.repeats} and >= {args.min_time} s of calls per "
           f"variant (XLA and oneDNN called in turn) after a warm-up. fp32 GEMM peak "
           f"({peak_n}^3, best over {args.min_time} s of calls): JAX {jax_peak:.0f}"
           + (f", PyTorch {torch_peak:.0f}" if torch_peak else "")
           + f" GFLOP/s; % of the best, {best_gemm:.0f}. Theoretical fp32 peak: {theo_note}.",
           "", C.markdown_table(header, rows), "", *[f"- {n}" for n in notes],
           f"Total {time.perf_counter() - t_start:.0f} s; load average at the end {load}."]
  print("\n".join(lines[2:]), flush=True)
  if args.record:
    C.append_results(f"bench_conv_layers.py: ResNet-20 convolutions ({info['date']})",
                     "\n".join(lines))
    print(f"appended to {C.RESULTS}")
  return {"layers": out, "jax_peak": jax_peak, "torch_peak": torch_peak, "theoretical": theo,
          "totals": tot}


if __name__ == "__main__":
  main()
