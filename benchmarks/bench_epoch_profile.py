"""Where a compiled epoch's (or HVP loop's) time goes: oneDNN's convolutions, XLA's fusions.

Runs the library's compiled epoch (``loop.make_epoch_fn``, what ``train_curve`` and ``train_sgd``
run) for two workloads at the sizes of ``bench_train_vs_torch.py``: one epoch of Bezier curve
training (PreResNet-20, 3 bends, ``curve_training.curve_train_step``) and one of plain SGD
(ResNet-20, ``training.train_step``), ``--steps`` minibatches of ``--batch`` synthetic 32x32x3
images, float32, the default ``cpu_convolutions="auto"``; and a third, ``--products``
Hessian-vector products of ResNet-20 (one batch, inference mode, all parameters) in one compiled
loop, as Lanczos runs them. Each is timed ``--rounds`` times without the profiler (best kept),
then run once under ``jax.profiler.trace``; the operations of its compiled program (trace events
named by its HLO instructions) are summed by kind, per step or product:

* oneDNN convolutions: forward, backward-data and backward-weights (the FFI custom calls), with
  their FLOPs (``2 x`` the forward output's size ``x KH x KW x C`` each) and the rate they reach
  inside the epoch;
* XLA's YNNPACK fusions (the reductions of BatchNorm and the loss, small matrix products) and
  XLA's other fusions and operations (BatchNorm's elementwise passes, ReLU, the optimiser);
* idle: the profiled epoch's wall time when no operation of the program runs (hand-over between
  threads, the loop's control), and the time two operations overlapped (XLA runs independent
  operations on its threads at once).

Then every distinct oneDNN call of the epoch (same target, shapes and attributes) is timed alone,
its operands random and hot in cache (best of ``--alone_calls`` jitted calls after a warm-up,
less the best time of an empty jitted call), and set against its best duration inside the epoch
(best against best: the shared machine's load moves both).

Run: ``python benchmarks/bench_epoch_profile.py`` (a few minutes on 2 cores; appends to
RESULTS.md); ``--tiny``: PreResNet-8 / ResNet-8 at batch 8, 2 steps or products, not
recorded.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.backends.cpu import onednn_build  # noqa: E402
from landscape_jax.core import hessian  # noqa: E402
from landscape_jax.methods import curve_training, loop, training  # noqa: E402

KINDS = {onednn_build.TARGET: "oneDNN forward", onednn_build.TARGET_BWD_DATA:
         "oneDNN backward-data", onednn_build.TARGET_BWD_WEIGHTS: "oneDNN backward-weights"}
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (custom-call|fusion|[\w\-]+)\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--steps", type=int, default=10, help="minibatches per epoch")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--depth", type=int, default=20)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--products", type=int, default=4, help="Hessian-vector products in the loop")
  p.add_argument("--alone_calls", type=int, default=30)
  args = p.parse_args(argv)
  if args.tiny:
    args.steps, args.batch, args.depth, args.rounds, args.alone_calls = 2, 8, 8, 1, 3
    args.products = 2
  return C.finish_args(args)


def _shape(text: str) -> tuple[type, tuple[int, ...]]:
  """An HLO shape's dtype and dimensions: ``"f32[2,3]"`` -> ``(jnp.float32, (2, 3))``."""
  m = _SHAPE.match(text)
  return _DTYPES[m.group(1)], tuple(int(d) for d in m.group(2).split(",") if d)


def _attributes(config: str) -> dict:
  """The FFI attributes of a custom call's ``backend_config={...}`` (booleans, integers and
  ``dense<...> : tensor<Nxi64>`` arrays, the kinds our kernels take)."""
  attrs = {}
  for name, value in re.findall(r"(\w+) = (dense<[^>]*> : tensor<\d+xi64>|true|false|-?\d+ : i64)",
                                config):
    if value in ("true", "false"):
      attrs[name] = value == "true"
    elif value.startswith("dense"):
      inner, size = re.match(r"dense<\[?([^\]>]*)\]?> : tensor<(\d+)xi64>", value).groups()
      vals = [int(v) for v in inner.split(",")]
      attrs[name] = np.asarray(vals * int(size) if len(vals) == 1 else vals, np.int64)
    else:
      attrs[name] = np.int64(int(value.split(":")[0]))
  return attrs


def program_ops(hlo: str) -> dict[str, dict]:
  """Each instruction of a compiled program's text: its kind (a `KINDS` value, "XLA YNNPACK
  fusion", "XLA fusion" or "XLA <opcode>") and, for the oneDNN calls, their FLOPs and what
  `alone` needs to run the same call."""
  ops = {}
  for line in hlo.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, out, opcode = m.groups()
    info = {"kind": f"XLA {opcode}"}
    if opcode == "fusion":
      info["kind"] = "XLA YNNPACK fusion" if "__ynn_fusion" in line else "XLA fusion"
    target = re.search(r'custom_call_target="([^"]+)"', line)
    if target and target.group(1) in KINDS:
      operands = re.search(r"operand_layout_constraints=\{(.*?)\}, api_version", line).group(1)
      shapes = [_shape(s) for s in re.findall(r"\w+\[[\d,]*\]", operands)]
      out_shape = _shape(out)
      kind = KINDS[target.group(1)]
      # the forward output y and the kernel w: fwd (x, w) -> y, bwd-data (dy, w) -> dx,
      # bwd-weights (x, dy) -> dw
      if kind == "oneDNN forward":
        y, w = out_shape[1], shapes[1][1]
      elif kind == "oneDNN backward-data":
        y, w = shapes[0][1], shapes[1][1]
      else:
        y, w = shapes[1][1], out_shape[1]
      config = re.search(r"backend_config=\{(.*?)\}(?:, |$)", line)
      info.update(kind=kind, target=target.group(1), operands=shapes, out=out_shape,
                  attrs=_attributes(config.group(1) if config else ""),
                  flops=2.0 * np.prod(y) * w[0] * w[1] * w[2])
    ops[name] = info
  return ops


def profile(fn, ops: dict, module: str) -> tuple[float, list[dict]]:
  """Runs ``fn`` once under the profiler; returns its wall time and the trace's events of the
  program's operations (name, start, duration in seconds)."""
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d):
      C.block(fn())
    wall = time.perf_counter() - t
    path = glob.glob(os.path.join(d, "**", "*.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  out = []
  for e in events:
    args = e.get("args", {})
    if (e.get("ph") == "X" and args.get("hlo_module") == module and args.get("hlo_op") in ops):
      out.append({"op": args["hlo_op"], "ts": e["ts"] * 1e-6, "dur": e["dur"] * 1e-6})
  return wall, out


def busy_time(events) -> float:
  """The length of the union of the events' intervals."""
  total, end = 0.0, -np.inf
  for a, b in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def dispatch_floor(calls: int) -> float:
  """Best seconds of a jitted call that does nothing measurable (an add on one number): what
  dispatching a call and waiting for it costs, taken off `alone`'s times."""
  f = jax.jit(lambda a: a + 1.0)
  a = jnp.zeros(())
  C.block(f(a))
  return C.best_time(lambda: f(a), repeats=calls)


def alone(info: dict, calls: int, floor: float) -> float:
  """Best seconds of one oneDNN call run by itself (random operands, hot in cache), less the
  `dispatch_floor`."""
  keys = jax.random.split(jax.random.key(0), len(info["operands"]))
  args = [jax.random.normal(k, s, d) for k, (d, s) in zip(keys, info["operands"], strict=True)]
  out = jax.ShapeDtypeStruct(info["out"][1], info["out"][0])
  f = jax.jit(lambda *a: jax.ffi.ffi_call(info["target"], out)(*a, **info["attrs"]))
  C.block(f(*args))
  return max(C.best_time(lambda: f(*args), repeats=calls) - floor, 1e-6)


def curve_epoch(args, images, labels, idx):
  model = lj.get_model(f"preresnet{args.depth}", num_classes=10)
  x0 = jnp.zeros((1, 32, 32, 3))
  v0, v1 = (model.init(jax.random.key(i), x0) for i in (1, 2))
  loss_fn = lj.make_loss_fn(model, mean=jnp.full(3, 120.0), std=jnp.full(3, 60.0),
                            batch_stats=v0["batch_stats"], train=True)
  ends, interior = lj.split_curve(lj.init_curve(v0["params"], v1["params"], num_bends=3))
  opt = optax.sgd(0.03, momentum=0.9)
  state = curve_training.CurveTrainState(jnp.zeros((), jnp.int32), interior, opt.init(interior))

  def step_fn(fn_args, s, batch, k):
    return curve_training.curve_train_step(fn_args[0], opt, s, fn_args[1], batch, k,
                                           kind="bezier", weight_decay=5e-4)

  epoch = loop.make_epoch_fn(step_fn)
  fn_args = (loss_fn, ends)
  return (f"preresnet{args.depth} Bezier curve", epoch,
          (fn_args, state, images, labels, idx, jax.random.key(0)), args.steps, "step")


def sgd_epoch(args, images, labels, idx):
  name = f"resnet{args.depth}"
  model = lj.get_model(name, num_classes=10)
  tx = lj.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
  state = training.create_train_state(model, jax.random.key(1), images[:args.batch], tx)
  mean, std = jnp.full(3, 120.0), jnp.full(3, 60.0)

  def step_fn(fn_args, st, batch, k):
    st, metrics = training.train_step.__wrapped__(st, batch, k, model=model, tx=tx, mean=mean,
                                                  std=std)
    return st, metrics["loss"]

  return (f"{name} SGD", loop.make_epoch_fn(step_fn),
          (None, state, images, labels, idx, jax.random.key(0)), args.steps, "step")


def hvp_loop(args, images, labels, idx):
  """`--products` Hessian-vector products of the mean cross-entropy of one batch (inference
  mode, all parameters) in one compiled loop, as Lanczos runs them (`hessian.flat_hvp_operator`,
  forward over reverse, the convolutions' derivatives on oneDNN)."""
  del idx
  name = f"resnet{args.depth}"
  model = lj.get_model(name, num_classes=10)
  x = (images[:args.batch].astype(jnp.float32) - 120.0) / 60.0
  variables = model.init(jax.random.key(1), x[:1])
  loss_fn = lj.make_loss_fn(model, batch_stats=variables["batch_stats"], train=False)
  params, batch = variables["params"], (x, labels[:args.batch])
  u = jax.random.normal(jax.random.key(3), ravel_pytree(params)[0].shape)
  products = args.products

  @jax.jit
  def loop_fn(p, b, u):
    op = hessian.flat_hvp_operator(loss_fn, p, b, None, False, None,
                                   hessian.min_flops_for("auto"))
    return jax.lax.fori_loop(0, products, lambda i, v: op.matvec(v / jnp.linalg.norm(v)), u)

  return (f"{name} Hessian-vector products in a loop", loop_fn, (params, batch, u), products,
          "product")


def run_workload(args, make, peak, floor):
  n = args.steps * args.batch
  images = jax.random.randint(jax.random.key(0), (n, 32, 32, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(n) % 10
  idx = jnp.arange(n).reshape(args.steps, args.batch)
  label, epoch, call_args, steps, unit = make(args, images, labels, idx)
  compiled = epoch.lower(*call_args).compile()
  hlo = compiled.as_text()
  module = hlo.split()[1].rstrip(",")  # "HloModule jit_epoch, ...": the trace's hlo_module
  ops = program_ops(hlo)
  C.block(epoch(*call_args))  # the first call compiles and warms the caches
  best = C.best_time(lambda: epoch(*call_args), repeats=args.rounds)
  wall, events = profile(lambda: epoch(*call_args), ops, module)
  by_kind = collections.defaultdict(lambda: [0.0, 0, 0.0])  # seconds, calls, FLOPs
  per_op = collections.defaultdict(list)
  for e in events:
    info = ops[e["op"]]
    k = by_kind[info["kind"]]
    k[0] += e["dur"]
    k[1] += 1
    k[2] += info.get("flops", 0.0)
    if "target" in info:
      per_op[e["op"]].append(e["dur"])
  busy = busy_time(events)
  summed = sum(v[0] for v in by_kind.values())
  rows = []
  order = list(KINDS.values()) + sorted(k for k in by_kind if k not in KINDS.values())
  for kind in order:
    if kind not in by_kind:
      continue
    s, calls, flops = by_kind[kind]
    rows.append([kind, s / steps * 1e3, f"{s / wall:.0%}", calls / steps,
                 f"{flops / s / 1e9:.0f} ({flops / s / 1e9 / peak:.0%})" if flops else "-"])
  onednn_busy = busy_time([e for e in events if "target" in ops[e["op"]]])
  rows.append(["two operations at once (counted twice above)", -(summed - busy) / steps * 1e3,
               f"{-(summed - busy) / wall:.0%}", "-", "-"])
  rows.append(["idle (no operation of the program running)", (wall - busy) / steps * 1e3,
               f"{(wall - busy) / wall:.0%}", "-", "-"])
  rows.append([f"profiled call, per {unit}", wall / steps * 1e3, "100%", "-", "-"])
  rows.append([f"call without the profiler, per {unit} (best of {args.rounds})",
               best / steps * 1e3, "-", "-", "-"])
  # the same oneDNN calls, alone
  distinct = {}
  for op, durs in per_op.items():
    info = ops[op]
    key = (info["target"], tuple(info["operands"]), info["out"],
           tuple((k, tuple(np.atleast_1d(v).tolist())) for k, v in sorted(info["attrs"].items())))
    distinct.setdefault(key, (info, []))[1].extend(durs)
  alone_rows, in_epoch_total, alone_total = [], 0.0, 0.0
  for info, durs in sorted(distinct.values(), key=lambda v: -sum(v[1])):
    t_alone = alone(info, args.alone_calls, floor)
    med = min(durs)
    in_epoch_total += med * len(durs)
    alone_total += t_alone * len(durs)
    x = next(s for _, s in info["operands"] if len(s) == 4)
    w = info["out"][1] if info["kind"] == "oneDNN backward-weights" else info["operands"][1][1]
    alone_rows.append([info["kind"].replace("oneDNN ", ""), "x".join(map(str, x)) + " : " +
                       "x".join(map(str, w)), len(durs) / steps, med * 1e3, t_alone * 1e3,
                       med / t_alone])
  alone_rows.append([f"all oneDNN calls of a {unit}", "", sum(r[2] for r in alone_rows),
                     in_epoch_total / steps * 1e3, alone_total / steps * 1e3,
                     in_epoch_total / alone_total])
  return {"label": label, "unit": unit, "rows": rows, "alone": alone_rows,
          "best_step_ms": best / steps * 1e3, "onednn_share": onednn_busy / wall,
          "idle_share": (wall - busy) / wall,
          "in_epoch_over_alone": in_epoch_total / alone_total}


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t0 = time.perf_counter()
  peak = C.matmul_peak(n=256 if args.tiny else 2048)
  floor = dispatch_floor(10 * args.alone_calls)
  results = [run_workload(args, make, peak, floor)
             for make in (curve_epoch, sgd_epoch, hvp_loop)]
  lines = [C.format_info(info), "",
           f"One compiled epoch of {args.steps} steps of batch {args.batch} (synthetic 32x32x3 "
           "images, float32, cpu_convolutions='auto'), profiled once after the timed epochs; "
           f"the operations of its program summed by kind, per step; and {args.products} "
           "Hessian-vector products of ResNet-20 (one batch, inference mode) in one compiled "
           f"loop, per product. fp32 GEMM peak {peak:.0f} "
           "GFLOP/s (measured at the start)."]
  for r in results:
    lines += ["", f"**{r['label']}**", "",
              C.markdown_table(["part", f"ms per {r['unit']}", "share of the profiled call",
                                f"calls per {r['unit']}", "GFLOP/s (% GEMM peak)"], r["rows"]),
              "",
              f"The same oneDNN calls alone (random operands, hot in cache; best of "
              f"{args.alone_calls} calls less {floor * 1e3:.3f} ms, the best of an empty "
              "jitted call), against each call's best inside the program:", "",
              C.markdown_table(["call", "images : kernel", f"per {r['unit']}",
                                "best ms in the program",
                                "ms alone", "program / alone"], r["alone"]), "",
              f"- oneDNN's share of the profiled call {r['onednn_share']:.0%} (time with at "
              f"least one oneDNN call running), idle "
              f"{r['idle_share']:.0%}; at their best, oneDNN's calls take "
              f"{r['in_epoch_over_alone']:.2f}x as long inside the program as alone."]
  lines += ["", C.total_line(t0)]
  C.report(lines, title="bench_epoch_profile.py: where a compiled epoch's and a loop of HVPs' "
           "time goes",
           info=info, record=args.record)
  return {"results": results, "peak": peak, "floor": floor}


if __name__ == "__main__":
  main()
