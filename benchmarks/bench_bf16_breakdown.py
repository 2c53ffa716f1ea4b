"""Where W1's bfloat16 time goes, on one pinned core: ours and PyTorch's autocast, whole pass and
per convolution.

`bench_w1_bf16.py` compares the two bfloat16 paths with two threads each; on a shared 2-core
machine its ratio swings with the load (ours 1.9x slower in one block, 2.4x faster in another):
whichever process gets both cores at the right moment wins. This script takes contention out of
the comparison: the process and its PyTorch worker are pinned to the same single core
(``os.sched_setaffinity``, ``OMP_NUM_THREADS=1``, one PyTorch thread), every time is the best
call over ``--min_time`` seconds of calls, and the variants are called in turn. What it measures
is the CPU work per batch, which is what two quiet cores would split.

1. Whole forward pass of ResNet-20 (W1's model: random init, BatchNorm statistics of one
   training pass) on one batch of ``--batch`` synthetic images, loss + accuracy: ours
   (`make_metric_fn`, float32 and ``compute_dtype="bfloat16"``) and PyTorch's tuned model
   (BatchNorm folded, channels-last, inference mode) under ``torch.autocast("cpu",
   dtype=torch.bfloat16)``, eager and ``torch.compile``-d (``--compile``).
2. Each 3x3 stride-1 convolution shape of ResNet-20 (and the 3-channel stem) at the same batch,
   with bias and ReLU, in the forms our bfloat16 path uses: float32; bfloat16 from a float32
   input (rounded in the kernel, a few images at a time: a block's first convolution, whose input
   is also the float32 residual); from a bfloat16 input with a bfloat16 output (a result that
   only feeds convolutions); from a bfloat16 input plus a float32 residual with a float32 output
   (a block's second convolution), the residual added by oneDNN's sum post-op onto the output
   buffer (now; XLA copies the residual into that buffer first here, since the timed calls reuse
   it; inside a network it is the dead block input, aliased without a copy) and by the binary-add
   post-op used before. The whole pass is also timed with the binary add (before). PyTorch's
   oneDNN convolution in bfloat16 (channels-last), alone and followed by its bf16 residual add.

Run: ``python benchmarks/bench_bf16_breakdown.py`` (about 3 minutes; appends to RESULTS.md),
``--tiny`` for a smoke run (not recorded). ``LANDSCAPE_JAX_TORCH_PYTHON`` names the interpreter
with torch (default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_CORE = min(os.sched_getaffinity(0))
if __name__ == "__main__" or os.environ.get("LANDSCAPE_JAX_BREAKDOWN_PIN") == "1":
  os.sched_setaffinity(0, {_CORE})  # before any thread pool exists
  os.environ["OMP_NUM_THREADS"] = "1"


def _best(fns: dict, min_time: float) -> dict[str, float]:
  """Best call of each ``fn()`` (called in turn, two warm-up calls each), over `min_time` s each."""
  for f in fns.values():
    f()
    f()
  best = dict.fromkeys(fns, float("inf"))
  start, n = time.perf_counter(), 0
  while n < 3 or time.perf_counter() - start < min_time * len(fns):
    for k, f in fns.items():
      t = time.perf_counter()
      f()
      best[k] = min(best[k], time.perf_counter() - t)
    n += 1
  return best


def _compiled(onednn, sum_op: bool, f, *args):
  """``jax.jit(f)`` compiled for `args` with the residual added by oneDNN's sum post-op (the
  default) or, ``sum_op=False``, by the binary-add post-op used before."""
  import jax

  saved = onednn._SUM_RESIDUAL
  onednn._SUM_RESIDUAL = sum_op
  onednn._conv_fn.cache_clear()
  try:
    return jax.jit(f).lower(*args).compile()
  finally:
    onednn._SUM_RESIDUAL = saved
    onednn._conv_fn.cache_clear()


def _conv_forms(onednn, w, b, bf):
  """{name: (fn(x, r), which input (f32 or bf16), sum post-op)} of one convolution shape."""
  kw = dict(padding=1, bias=b, relu=True)
  cd = dict(kw, compute_dtype="bfloat16")
  return {
    "float32": (lambda x, r: onednn.conv(x, w, **kw), "f32", True),
    "bf16, f32 in -> bf16 out": (lambda x, r: onednn.conv(x, w, **cd, out_dtype=bf), "f32", True),
    "bf16, bf16 in -> bf16 out": (lambda x, r: onednn.conv(x, w, **cd, out_dtype=bf), "bf16",
                                  True),
    "bf16, bf16 in + f32 residual -> f32 out, binary-add post-op (before)": (
      lambda x, r: onednn.conv(x, w, residual=r, **cd), "bf16", False),
    "bf16, bf16 in + f32 residual -> f32 out, sum post-op (now)": (
      lambda x, r: onednn.conv(x, w, residual=r, **cd), "bf16", True),
    "XLA cast f32 -> bf16 of the input": (lambda x, r: x.astype(bf), "f32", True),
  }


def torch_worker(argv):
  """The PyTorch side (in the torch interpreter): prints one JSON line of seconds."""
  import torch

  args = json.loads(argv[0])
  torch.set_num_threads(1)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_baseline as TB

  out = {"torch": torch.__version__, "layers": [], "forward": {}}
  n = args["batch"]
  for h, c, o in args["shapes"]:
    conv = torch.nn.Conv2d(c, o, 3, padding=1).to(memory_format=torch.channels_last).bfloat16()
    x = torch.randn(n, c, h, h).bfloat16().contiguous(memory_format=torch.channels_last)
    r = torch.randn(n, o, h, h).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
      t = _best({"bf16": lambda conv=conv, x=x: torch.relu(conv(x)),
                 "bf16+res": lambda conv=conv, x=x, r=r: torch.relu(conv(x) + r)},
                args["min_time"])
    out["layers"].append(t)
  net = TB.torch_resnet(args["depth"], width=args["width"])
  for mod in list(net.modules()):  # BatchNorm folded: biased convolutions, no BatchNorm
    for name, child in list(mod.named_children()):
      if isinstance(child, torch.nn.BatchNorm2d):
        setattr(mod, name, torch.nn.Identity())
      elif isinstance(child, torch.nn.Conv2d):
        setattr(mod, name, torch.nn.Conv2d(child.in_channels, child.out_channels,
                                           child.kernel_size, child.stride, child.padding))
  net = net.to(memory_format=torch.channels_last).eval()
  x = torch.randn(n, 3, args["image_size"], args["image_size"]).contiguous(
    memory_format=torch.channels_last)
  y = torch.randint(0, 10, (n,))

  def forward(m):
    def run():
      with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
          logits = m(x)
        logits = logits.float()
        return (torch.nn.functional.cross_entropy(logits, y, reduction="sum").item(),
                (logits.argmax(1) == y).sum().item())
    return run

  forms = {"eager": forward(net)}
  if args["compile"]:
    t = time.perf_counter()
    compiled = torch.compile(net, dynamic=False)
    forward(compiled)()
    out["compile_seconds"] = time.perf_counter() - t
    forms["compiled"] = forward(compiled)
  out["forward"] = _best(forms, args["min_time"])
  print(json.dumps(out), flush=True)


def main(argv=None):
  _here = os.path.dirname(os.path.abspath(__file__))
  sys.path.insert(0, os.path.dirname(_here))
  sys.path.insert(0, _here)
  import _common as C
  import bench_surface as S
  import jax
  import jax.numpy as jnp
  import numpy as np

  import landscape_jax as lj
  from landscape_jax.backends.cpu import onednn

  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=250)
  p.add_argument("--min_time", type=float, default=6.0,
                 help="seconds of calls per variant (the best call counts)")
  p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                 help="also time PyTorch's torch.compile-d forward")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.batch, args.min_time, args.compile = "resnet8", 16, 0.0, False
  C.finish_args(args)
  info = C.announce_machine()
  t_start = time.perf_counter()
  bf = jnp.bfloat16
  print(f"pinned to core {_CORE} (affinity {sorted(os.sched_getaffinity(0))}), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)

  # 1. whole forward pass
  size = 16 if args.tiny else 32
  data = S.synthetic_dataset(args.batch, (size, size, 3), seed=0)
  model, variables, _, flops = S.setup(args.model, data, seed=0, dtype=jnp.float32, width=1.0)
  params = variables["params"]
  fwd = {}
  for name, dt, sum_op in (("ours, float32", None, True), ("ours, bfloat16", "bfloat16", True),
                           ("ours, bfloat16, residual as a binary-add post-op (before)",
                            "bfloat16", False)):
    m = lj.make_metric_fn(model, data, batch_stats=variables["batch_stats"],
                          batch_size=args.batch, compute_dtype=dt)
    compiled = _compiled(onednn, sum_op, m, params)
    fwd[name] = lambda compiled=compiled: jax.block_until_ready(compiled(params))
  whole = _best(fwd, args.min_time)
  print({k: f"{v * 1e3:.1f} ms" for k, v in whole.items()}, flush=True)

  # 2. per convolution
  shapes = [(size, 3, 16), (size, 16, 16), (size // 2, 32, 32), (size // 4, 64, 64)]
  layers = []
  for h, c, o in shapes:
    k = jax.random.split(jax.random.key(h * c), 3)
    x = jax.random.normal(k[0], (args.batch, h, h, c))
    w = jax.random.normal(k[1], (3, 3, c, o)) / np.sqrt(9 * c)
    r = jax.random.normal(k[2], (args.batch, h, h, o))
    b = jnp.ones((o,))
    calls = {}
    for name, (f, which, sum_op) in _conv_forms(onednn, w, b, bf).items():
      a = x if which == "f32" else x.astype(bf)
      g = _compiled(onednn, sum_op, f, a, r)
      calls[name] = lambda g=g, a=a, r=r: jax.block_until_ready(g(a, r))
    t = _best(calls, args.min_time / 3)
    impl = onednn.implementation(x.shape, w.shape, padding=1, bias=True, relu=True,
                                 compute_dtype="bfloat16")
    layers.append({"shape": (h, c, o), "flops": 2.0 * args.batch * h * h * o * c * 9,
                   "impl": impl, **t})
    print(f"  {args.batch}x{h}x{h}x{c} -> {o}: "
          + ", ".join(f"{n} {v * 1e3:.2f} ms" for n, v in t.items()), flush=True)

  # 3. PyTorch in its own process, on the same core
  torch_res, notes = None, []
  have_torch, why = C.torch_installed()
  if args.torch and have_torch:
    spec = json.dumps({"batch": args.batch, "shapes": shapes, "min_time": args.min_time,
                       "depth": S.depth_of(args.model), "width": 1.0, "image_size": size,
                       "compile": args.compile})
    env = dict(os.environ, OMP_NUM_THREADS="1", LANDSCAPE_JAX_BREAKDOWN_PIN="1")
    torch_res = C.run_json([C.torch_python(), os.path.abspath(__file__), "--torch-worker", spec],
                           name="the PyTorch worker", env=env, timeout=900)
    notes.append(f"PyTorch {torch_res['torch']} in its own process pinned to the same core, 1 "
                 "thread; its model: BatchNorm folded (biased convolutions), channels-last, "
                 "inference_mode, bf16 autocast, random weights"
                 + (f"; torch.compile took {torch_res['compile_seconds']:.0f} s" if args.compile
                    else "") + ".")
  elif args.torch:
    notes.append(why + ".")

  def gfs(fl, t):
    return fl / t / 1e9

  total = args.batch * flops
  rows = [[k, v * 1e3, gfs(total, v), v / whole["ours, bfloat16"]] for k, v in whole.items()]
  if torch_res:
    for k, v in torch_res["forward"].items():
      rows.append([f"PyTorch bf16 autocast, {k}", v * 1e3, gfs(total, v),
                   v / whole["ours, bfloat16"]])
  whole_table = C.markdown_table(
    ["forward pass + loss (one core)", f"ms per batch of {args.batch}", "GFLOP/s",
     "time / ours bf16"], rows)
  names = [n for n in layers[0] if n not in ("shape", "flops", "impl")]
  header = ["conv 3x3 s1 + bias + ReLU (N H W C -> O)", "oneDNN bf16 kernel",
            *[f"{n} (ms)" for n in names]]
  if torch_res:
    header += ["PyTorch bf16 (ms)", "PyTorch bf16 + residual add (ms)"]
  lrows = []
  for i, lay in enumerate(layers):
    h, c, o = lay["shape"]
    row = [f"{args.batch}x{h}x{h}x{c} -> {o}", lay["impl"], *[lay[n] * 1e3 for n in names]]
    if torch_res:
      t = torch_res["layers"][i]
      row += [t["bf16"] * 1e3, t["bf16+res"] * 1e3]
    lrows.append(row)
  layer_table = C.markdown_table(header, lrows)
  lines = [
    C.format_info(info), "",
    f"One core (core {_CORE}, sched_setaffinity; OMP_NUM_THREADS=1; PyTorch 1 thread, same "
    f"core); best call over {args.min_time} s of calls per variant (whole passes; a third of "
    f"that per convolution), variants in turn. {args.model}, batch {args.batch} of synthetic "
    f"{size}x{size}x3 images, {flops / 1e6:.2f} MFLOP per image.", "", whole_table, "",
    layer_table, "", *[f"- {n}" for n in notes],
    "- Command: `python benchmarks/bench_bf16_breakdown.py` (with torch: "
    "`LANDSCAPE_JAX_TORCH_PYTHON=<venv python>`).",
    "", C.total_line(t_start),
  ]
  C.report(lines, title="bench_bf16_breakdown.py: W1's bfloat16 time on one core, ours and "
           "PyTorch's", info=info, record=args.record)
  return {"whole": whole, "layers": layers, "torch": torch_res}


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--torch-worker":
    torch_worker(sys.argv[2:])
  else:
    main()
