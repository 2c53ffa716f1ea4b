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

``--backward``: where a training step's time goes. For each distinct convolution, the best time
of the forward, backward-data and backward-weights products on oneDNN (the three FFI calls of
``onednn_autodiff``, each jitted alone), on XLA (``jax.vjp`` of ``lax.conv_general_dilated``:
the forward, then the two cotangents each jitted alone) and on PyTorch (``torch_conv_backward.py``
in its own process: ``F.conv2d`` and ``aten.convolution_backward``, channels-last); then one
whole training step on each side (``training.train_step`` with ``cpu_convolutions="onednn"``
and ``"xla"``; PyTorch's ``torch.optim.SGD`` loop, channels-last) and the step's time outside
the convolutions: ``step - sum over layers of uses x (fwd + bwd_data + bwd_weights)`` (the
first layer's backward data, which no step computes, left out).
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
  p.add_argument("--backward", action="store_true",
                 help="per-layer forward / backward-data / backward-weights times and the "
                      "training step's time outside the convolutions (oneDNN, XLA, PyTorch)")
  args = p.parse_args(argv)
  if args.tiny:
    args.batch, args.repeats, args.min_time = 8, 2, 0.0
  return C.finish_args(args)


def backward_main(args, info):
  """``--backward``: per-layer times of the three products and of one whole training step."""
  import optax

  from landscape_jax.backends.cpu import onednn_autodiff as ad
  from landscape_jax.methods import training

  t_start = time.perf_counter()
  if not (jax.default_backend() == "cpu" and onednn_build.available()):
    raise SystemExit(f"--backward needs oneDNN on the CPU: {onednn_build.unavailable_reason()}")
  shapes = conv_shapes(args.model, batch=args.batch)
  key = jax.random.key(0)
  out = []
  for i, (s, count) in enumerate(shapes):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    x = jax.random.normal(k1, (s["n"], s["h"], s["w"], s["c"]), jnp.float32)
    w = jax.random.normal(k2, (s["k"], s["k"], s["c"], s["o"]), jnp.float32)
    p = s["pad"]
    params = dict(strides=(s["stride"],) * 2, padding=(p,) * 4, dilation=(1, 1),
                  in_hw=(s["h"], s["w"]), k_hw=(s["k"], s["k"]))
    xla_f = lambda x, w, s=s, p=p: jax.lax.conv_general_dilated(
      x, w, (s["stride"],) * 2, ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.jit(xla_f)(x, w)
    dy = jax.random.normal(k3, y.shape, jnp.float32)
    dnn = {"fwd": jax.jit(lambda x, w, params=params: ad.conv_p.bind(x, w, kind="fwd", **params)),
           "bwd_data": jax.jit(lambda dy, w, params=params: ad.conv_p.bind(
             dy, w, kind="bwd_data", **params)),
           "bwd_weights": jax.jit(lambda x, dy, params=params: ad.conv_p.bind(
             x, dy, kind="bwd_weights", **params))}
    xla = {"fwd": jax.jit(xla_f),
           "bwd_data": jax.jit(lambda dy, w, x=x, f=xla_f: jax.vjp(lambda a: f(a, w), x)[1](dy)[0]),
           "bwd_weights": jax.jit(lambda x, dy, w=w, f=xla_f: jax.vjp(lambda b: f(x, b), w)[1](
             dy)[0])}
    operands = {"fwd": (x, w), "bwd_data": (dy, w), "bwd_weights": (x, dy)}
    r = {"shape": s, "count": count, "flops": flops_of(s)}
    for kind in ad.KINDS:  # exactness of the products timed: oneDNN against XLA
      got, want = (np.asarray(f[kind](*operands[kind])) for f in (dnn, xla))
      if np.max(np.abs(got - want)) > 1e-4 * np.max(np.abs(want)):
        raise AssertionError(f"oneDNN and XLA {kind} differ for {s}.")
      times = time_interleaved({"onednn": dnn[kind], "xla": xla[kind]}, *operands[kind],
                               repeats=args.repeats, min_time=args.min_time)
      r[f"onednn_{kind}"], r[f"xla_{kind}"] = times["onednn"], times["xla"]
      r[f"impl_{kind}"] = ad.implementation(kind, x.shape, w.shape, strides=s["stride"],
                                            padding=p)
    out.append(r)
    print(f"  {s} x{count}: " + ", ".join(
      f"{k} oneDNN {1e3 * r[f'onednn_{k}']:.2f} ms / XLA {1e3 * r[f'xla_{k}']:.2f} ms"
      for k in ad.KINDS), flush=True)

  model = lj.get_model(args.model, num_classes=10)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
  images = jax.random.randint(key, (args.batch, 32, 32, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(args.batch) % 10
  state = training.create_train_state(model, jax.random.key(1), images, tx)
  mean, std = jnp.full(3, 120.0), jnp.full(3, 60.0)
  steps = {c: (lambda st, c=c: training.train_step(
    st, (images, labels), jax.random.key(2), model=model, tx=tx, mean=mean, std=std,
    cpu_convolutions=c)) for c in ("onednn", "xla")}
  step_s = time_interleaved(steps, state, repeats=args.repeats, min_time=2 * args.min_time)

  def conv_total(time_of):
    """Sum over layers of uses x product times; the first convolution (3 input channels, the
    images) has no backward data in a training step."""
    return sum(r["count"] * time_of(r, kind) for r in out for kind in ad.KINDS
               if not (kind == "bwd_data" and r["shape"]["c"] == 3))

  sides = {"onednn": conv_total(lambda r, k: r[f"onednn_{k}"]),
           "xla": conv_total(lambda r, k: r[f"xla_{k}"])}
  steps_all = {"onednn": step_s["onednn"], "xla": step_s["xla"]}
  notes = []
  have_torch, why = C.torch_installed()
  if args.torch and have_torch:
    ans = C.run_json(
      [C.torch_python(), os.path.join(_HERE, "torch_conv_backward.py"), "--shapes",
       json.dumps([r["shape"] for r in out]), "--repeats", str(args.repeats), "--min_time",
       str(args.min_time), "--threads", str(os.cpu_count())], name="torch_conv_backward.py")
    for r, t in zip(out, ans["layers"], strict=True):
      for kind in ad.KINDS:
        r[f"torch_{kind}"] = t[kind]
    sides["torch"] = conv_total(lambda r, k: r[f"torch_{k}"])
    steps_all["torch"] = ans["step"]
    notes.append(f"PyTorch {ans['torch']} in its own process, {ans['threads']} threads, "
                 "channels-last, float32 (`F.conv2d`, `aten.convolution_backward`; the step: "
                 "`torch.optim.SGD` momentum 0.9, weight decay 5e-4, BatchNorm in training mode).")
  elif args.torch:
    notes.append(why + ".")

  def ms(v):
    return f"{1e3 * v:.2f}" if v == v else "-"

  names = [k for k in ("onednn", "xla", "torch") if k in sides]
  header = ["conv (N, H, W, C -> O, k, stride)", "uses"] + [
    f"{k} {side}" for k in ("fwd", "bwd_data", "bwd_weights") for side in names] + [
      "oneDNN kernels (fwd / bwd_data / bwd_weights)"]
  rows = []
  for r in out:
    s = r["shape"]
    rows.append([f"{s['n']}x{s['h']}x{s['w']}x{s['c']} -> {s['o']}, {s['k']}x{s['k']}, "
                 f"s{s['stride']}", r["count"]] + [
      ms(r.get(f"{side}_{k}", float("nan"))) for k in ("fwd", "bwd_data", "bwd_weights")
      for side in names] + [" / ".join(r[f"impl_{k}"] for k in ad.KINDS)])
  per_kind = {(side, k): sum(r["count"] * r[f"{side}_{k}"] for r in out
                             if not (k == "bwd_data" and r["shape"]["c"] == 3))
              for side in names for k in ad.KINDS}
  rows.append(["all convolutions of one training step", sum(r["count"] for r in out)] + [
    ms(per_kind[(side, k)]) for k in ("fwd", "bwd_data", "bwd_weights") for side in names] + [""])
  summary_header = ["side", "step ms", "convolutions ms (sum of the table)", "rest ms",
                    "rest / step"]
  summary = [[side, ms(steps_all[side]), ms(sides[side]), ms(steps_all[side] - sides[side]),
              f"{(steps_all[side] - sides[side]) / steps_all[side]:.2f}"] for side in names]
  lines = [C.format_info(info), "",
           f"Where a {args.model} training step at batch {args.batch} (float32, 32x32x3) spends "
           f"its time: ms per product of each distinct convolution (best call of >= "
           f"{args.repeats} and >= {args.min_time} s of calls; oneDNN and XLA called in turn; "
           "PyTorch in its own process), then the whole step (`training.train_step`, "
           "`cpu_convolutions` onednn / xla; PyTorch's SGD loop) and what is left outside the "
           "convolutions (BatchNorm in training mode, ReLU, adds, pooling, loss, optimiser "
           "update, layout copies, call overheads).", "",
           C.markdown_table(header, rows), "", C.markdown_table(summary_header, summary), "",
           *[f"- {n}" for n in notes],
           C.total_line(t_start)]
  C.report(lines, title=f"bench_conv_layers.py --backward: {args.model} training step "
           "breakdown", info=info, record=args.record)
  return {"layers": out, "steps": steps_all, "convolutions": sides}


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  if args.backward:
    return backward_main(args, info)
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
  lines = [C.format_info(info), "",
           f"Distinct convolutions of {args.model} at batch {args.batch} (from its inference "
           f"jaxpr), float32; best call of >= {args.repeats} and >= {args.min_time} s of calls per "
           f"variant (XLA and oneDNN called in turn) after a warm-up. fp32 GEMM peak "
           f"({peak_n}^3, best over {args.min_time} s of calls): JAX {jax_peak:.0f}"
           + (f", PyTorch {torch_peak:.0f}" if torch_peak else "")
           + f" GFLOP/s; % of the best, {best_gemm:.0f}. Theoretical fp32 peak: {theo_note}.",
           "", C.markdown_table(header, rows), "", *[f"- {n}" for n in notes],
           C.total_line(t_start)]
  C.report(lines, title="bench_conv_layers.py: ResNet-20 convolutions", info=info,
           record=args.record)
  return {"layers": out, "jax_peak": jax_peak, "torch_peak": torch_peak, "theoretical": theo,
          "totals": tot}


if __name__ == "__main__":
  main()
