"""Surface throughput on a fixed workload (issue #8), all variants measured in the same run.

Workload: CIFAR ResNet-20 (1x1-conv projection shortcuts), two filter-normalised random
directions (ignore="biasbn"), an 11 x 11 grid on [-1, 1]^2, 1000 synthetic 32 x 32 x 3 uint8
images with random labels, loss and accuracy per point (exact, inference mode, the centre's
BatchNorm statistics). Printed per variant: points/s, images/s, achieved GFLOP/s (analytic FLOPs
of the model's convolutions and matmuls), % of the fp32 matmul peak measured in the same run, and
the ratios to the two baselines:

  1. "JAX reference": the reference strategy in JAX: a Python loop over grid points that assigns
     the weights (``jax.tree.map``) and calls a jitted evaluation of the whole split per point;
  2. "PyTorch reference" (if torch is installed): the same strategy in PyTorch, ``model.eval()``,
     per-point ``p.copy_(c + x d1 + y d2)``, ``DataLoader`` batches of 128, the same ResNet with the
     Flax weights copied in (logits checked to agree to 1e-4);
  3. ``lj.surface_grid`` with ``lax.map`` and ``vmap`` over points, several chunk and batch
     sizes, BatchNorm folded into the convolutions (`landscape_jax.adapters.folding`), the batch
     size chosen
     by `landscape_jax.backends.cpu.autotune.choose_batch_size`, and on the CPU oneDNN's
     convolutions
     (`landscape_jax.backends.cpu.onednn`,
         make_metric_fn's default there) against XLA's ("XLA convs").

Also: ResNet-56 on a 5 x 5 grid, compile times, peak memory, and an error-controlled surface
(`make_error_controlled_metric_fn`, 51 x 51, tolerance 0.01) against the exact one. Every
variant's losses are compared with the main surface at the shared grid points (max |dloss|).

Run: ``python benchmarks/bench_surface.py`` (about 8 minutes on 2 CPU cores; appends to
benchmarks/RESULTS.md), ``--tiny`` for a few-second smoke run, ``--dtype bfloat16`` /
``--matmul_precision tensorfloat32`` on accelerators. The script runs unchanged on any backend.
"""

from __future__ import annotations

import functools
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)


def _host_device_flag():
  """``--host_devices N`` must reach XLA before jax starts (only when run as a script)."""
  n = 1
  for i, a in enumerate(sys.argv):
    if a.startswith("--host_devices"):
      n = int(a.split("=", 1)[1] if "=" in a else sys.argv[i + 1])
  flags = os.environ.get("XLA_FLAGS", "")
  if n > 1 and "host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


if __name__ == "__main__":
  _host_device_flag()


import _common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from torch_baseline import torch_resnet  # noqa: E402  (the PyTorch twin; imports torch lazily)

import landscape_jax as lj  # noqa: E402
from landscape_jax.adapters.evaluation import evaluate_split, inference_apply  # noqa: E402
from landscape_jax.backends.cpu import autotune, onednn_build  # noqa: E402

try:
  import torch
except ImportError:  # the PyTorch baseline is optional
  torch = None

BN_MOMENTUM = 0.9  # flax momentum of the bundled models' BatchNorm (PyTorch's 0.1)


# ------------------------------------------------------------------------------------ workload
def synthetic_dataset(n: int, image_shape, *, num_classes: int = 10, seed: int = 0) -> lj.Dataset:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  mean, std = lj.data.channel_stats(images)
  return lj.Dataset(images=images, labels=labels, num_classes=num_classes, mean=mean, std=std,
                    name="synthetic", split="train")


def batch_statistics(model, variables, data: lj.Dataset, n: int = 500):
  """Exact BatchNorm statistics of one training-mode pass over the first `n` images.

  One running-average update gives ``new = m old + (1 - m) batch``, so
  ``batch = (new - m old) / (1 - m)`` (non-trivial statistics for the benchmark's centre).
  """
  x = lj.data.normalize_images(jnp.asarray(data.images[:n]), data.mean, data.std)
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return jax.tree.map(lambda new, old: (new - BN_MOMENTUM * old) / (1 - BN_MOMENTUM),
                      upd["batch_stats"], variables["batch_stats"])


def setup(name: str, data: lj.Dataset, *, seed: int, dtype, width: float = 1.0):
  model = lj.get_model(name, num_classes=data.num_classes, dtype=dtype, width=width)
  x = jnp.zeros((2, *data.image_shape), jnp.float32)
  variables = model.init(jax.random.key(seed), x, train=False)
  variables = {"params": variables["params"],
               "batch_stats": batch_statistics(model, variables, data)}
  params = variables["params"]
  k1, k2 = jax.random.split(jax.random.key(seed + 1))
  d1, d2 = (lj.normalize_directions(lj.random_direction(k, params), params, norm="filter",
                                    ignore="biasbn") for k in (k1, k2))
  flops = C.model_flops_per_example(inference_apply(model), variables, x)
  return model, variables, (d1, d2), flops


# ------------------------------------------------------------------------------ JAX reference
def run_jax_reference(model, variables, dirs, data, coords, *, batch_size=128, donate=False):
  """Python loop over points: assign the weights, call a jitted whole-split evaluation."""
  center, (d1, d2), bs = variables["params"], dirs, variables["batch_stats"]
  apply_fn = inference_apply(model)
  split = lj.device_split(data.images, data.labels, batch_size=batch_size)
  mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)

  @jax.jit
  def evaluate(params, bs, split, mean, std):
    return evaluate_split(apply_fn, {"params": params, "batch_stats": bs}, split, mean, std)

  if donate:  # in-place assignment into the previous point's buffers, as PyTorch's copy_
    assign_jit = jax.jit(lambda p, c, a, b, x, y: jax.tree.map(
      lambda _, c, a, b: c + x * a + y * b, p, c, a, b), donate_argnums=0)
    state = {"p": jax.tree.map(jnp.copy, center)}

    def assign(x, y):
      state["p"] = assign_jit(state["p"], center, d1, d2, x, y)
      return state["p"]
  else:
    def assign(x, y):
      return jax.tree.map(lambda c, a, b: c + x * a + y * b, center, d1, d2)

  def point(x, y):
    out = evaluate(assign(float(x), float(y)), bs, split, mean, std)
    return float(out["loss"]), float(out["accuracy"])

  r = _time_points(point, coords)
  r["program_mb"] = C.program_memory_mb(evaluate.lower(center, bs, split, mean, std))
  return r


def run_recompiling(model, variables, dirs, data, coords, *, batch_size=128):
  """Anti-pattern: the point's coordinates are baked into a fresh jitted closure per point."""
  center, (d1, d2), bs = variables["params"], dirs, variables["batch_stats"]
  apply_fn = inference_apply(model)
  split = lj.device_split(data.images, data.labels, batch_size=batch_size)
  mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)
  vals = []
  with C.PeakMemory() as mem:
    t = time.perf_counter()
    for x, y in coords:
      f = jax.jit(lambda split, x=float(x), y=float(y): evaluate_split(
        apply_fn, {"params": jax.tree.map(lambda c, a, b: c + x * a + y * b, center, d1, d2),
                   "batch_stats": bs}, split, mean, std))
      out = f(split)
      vals.append((float(out["loss"]), float(out["accuracy"])))
    seconds = time.perf_counter() - t
  return _result(coords, vals, seconds, compile_s=float("nan"), mem=mem)


def _time_points(point, coords) -> dict:
  """Times ``point(x, y) -> (loss, accuracy)`` over `coords` after a first (compiling) call."""
  t = time.perf_counter()
  point(*coords[0])
  first = time.perf_counter() - t
  with C.PeakMemory() as mem:
    t = time.perf_counter()
    vals = [point(x, y) for x, y in coords]
    seconds = time.perf_counter() - t
  return _result(coords, vals, seconds, compile_s=first - seconds / len(coords), mem=mem)


def _result(coords, vals, seconds, *, compile_s, mem):
  vals = np.asarray(vals, np.float64)
  return {"points": len(coords), "seconds": seconds, "loss": vals[:, 0], "accuracy": vals[:, 1],
          "coords": np.asarray(coords), "compile_s": compile_s, "peak_mb": mem.peak_mb,
          "program_mb": float("nan")}


# ---------------------------------------------------------------------------------- PyTorch
_TORCH_NAMES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


def to_torch_state(*trees) -> dict[str, np.ndarray]:
  """Flax ``{"layer1_0": {"conv1": {"kernel"}}}`` leaves as PyTorch ``layer1_0.conv1.weight``."""
  out = {}
  for tree in trees:
    for path, leaf in zip(lj.trees.leaf_paths(tree), jax.tree.leaves(tree), strict=True):
      *mods, name = path.split("/")
      a = np.asarray(leaf, np.float32)
      if name == "kernel":
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
        name = "weight"
      out[".".join([*mods, _TORCH_NAMES.get(name, name)])] = np.ascontiguousarray(a)
  return out


def build_torch(depth, width, variables, data, device):
  net = torch_resnet(depth, width=width, num_classes=data.num_classes,
                     in_channels=data.image_shape[-1])
  state = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state(variables["params"],
                                                              variables["batch_stats"]).items()}
  missing, unexpected = net.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise RuntimeError(f"Flax -> PyTorch weight copy failed: missing {missing}, "
                       f"unexpected {unexpected}.")
  return net.to(device).eval()


def torch_images(data: lj.Dataset, device):
  x = (data.images.astype(np.float32) / 255.0 - data.mean) / data.std
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def check_torch_logits(model, variables, data, depth, width, device, n=16) -> float:
  net = build_torch(depth, width, variables, data, device)
  x = lj.data.normalize_images(jnp.asarray(data.images[:n]), data.mean, data.std)
  ref = np.asarray(model.apply(variables, x, train=False))
  with torch.no_grad():
    out = net(torch_images(data.subset(slice(0, n)), device)).cpu().numpy()
  return float(np.max(np.abs(out - ref)))


def run_torch_reference(variables, dirs, data, coords, *, depth, width, batch_size=128):
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = build_torch(depth, width, variables, data, device)
  names = [k for k, _ in net.named_parameters()]
  center = dict(net.named_parameters())
  c0 = {k: center[k].detach().clone() for k in names}
  d1, d2 = ({k: torch.from_numpy(v).to(device) for k, v in to_torch_state(d).items()}
            for d in dirs)
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(torch_images(data, device),
                                   torch.from_numpy(data.labels.astype(np.int64)).to(device)),
    batch_size=batch_size, shuffle=False)
  f = torch.nn.functional

  def point(x, y):
    with torch.no_grad():
      for k in names:  # the reference code's set_weights: w + x d1 + y d2
        center[k].copy_(c0[k] + float(x) * d1[k] + float(y) * d2[k])
      loss, correct, n = 0.0, 0, 0
      for xb, yb in loader:
        out = net(xb)
        loss += f.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
        n += yb.shape[0]
    return loss / n, correct / n

  return _time_points(point, coords)


# ------------------------------------------------------------------------------ surface_grid
def run_surface(metric_fn, center, dirs, xs, ys, *, map_mode="map", chunk_size=None,
                point_batch=None, mesh=None):
  """`surface_grid` on xs x ys: compile on a warm-up grid of one chunk, then time the grid.

  The default chunk is one point per device: with `lax.map` on the CPU the chunk size does not
  change the speed (one host round trip per ~second of compute), and the warm-up stays short.
  """
  n = len(xs) * len(ys)
  k = 1 if mesh is None else mesh.devices.size
  chunk = chunk_size or k
  engine = lj.EngineOptions(map_mode=map_mode, chunk_size=chunk, batch_size=point_batch,
                            progress=False, mesh=mesh)
  t = time.perf_counter()
  lj.surface_grid(metric_fn, center, dirs, np.linspace(-1, 1, chunk), np.zeros(1), engine=engine)
  warm = time.perf_counter() - t
  with C.PeakMemory() as mem:
    t = time.perf_counter()
    res = lj.surface_grid(metric_fn, center, dirs, xs, ys, engine=engine)
    seconds = time.perf_counter() - t
  coords = lj.surface.grid_coordinates(xs, ys)
  prog = float("nan")
  if mesh is None:  # the compiled chunk program (a cache hit of surface_grid's own)
    fn = lj.engine.chunk_fn(None, None, map_mode, point_batch)
    prog = C.program_memory_mb(fn.lower(lj.trees.as_partial(metric_fn),
                                        lj.plane_point_fn(center, tuple(dirs)),
                                        jnp.zeros((chunk, 2), jnp.float32)))
  return {"points": n, "seconds": seconds, "loss": res["loss"].reshape(-1),
          "accuracy": res["accuracy"].reshape(-1), "coords": coords,
          "compile_s": warm - seconds * chunk / n, "peak_mb": mem.peak_mb, "program_mb": prog}


# ------------------------------------------------------------------------------- head to head
def head_to_head(variants: dict, *, rounds: int, peak_fn) -> tuple[dict[str, list], list[float]]:
  """Runs every variant once per round, in turn, and measures the matmul peak at each round."""
  runs = {name: [] for name in variants}
  peaks = []
  for r in range(rounds):
    peaks.append(peak_fn())
    for name, fn in variants.items():
      runs[name].append(fn())
      res = runs[name][-1]
      print(f"  round {r + 1}: {name:<44} {res['seconds'] / res['points']:.3f} s/point",
            flush=True)
  return runs, peaks


def median_run(results: list[dict]) -> dict:
  """The round with the median time (its values and memory figures)."""
  order = np.argsort([r["seconds"] for r in results])
  return results[order[len(order) // 2]]


def head_to_head_table(runs: dict, peaks: list[float], *, flops: float, images: int) -> list[str]:
  """Median seconds per point over rounds; ratios of medians and the range of per-round ratios."""
  spp = {k: np.array([r["seconds"] / r["points"] for r in v]) for k, v in runs.items()}
  peak = float(np.max(peaks))  # the best measurement: the conservative denominator
  base = [k for k in ("PyTorch", "JAX ref") if k in spp]
  header = ["variant", "s/point (median)", "points/s", "GFLOP/s", "% peak"]
  header += [f"x {b} (median; rounds min-max)" for b in base]
  body = []
  for k, t in spp.items():
    med = float(np.median(t))
    gflops = images * flops / med / 1e9
    line = [k, med, 1 / med, gflops, 100 * gflops / peak]
    for b in base:
      per_round = spp[b] / t
      line.append(f"{np.median(spp[b]) / med:.2f} ({per_round.min():.2f}-{per_round.max():.2f})")
    body.append(line)
  return [f"Head to head ({len(peaks)} rounds; each round runs every variant once on the same "
          f"{runs[next(iter(runs))][0]['points']} grid points, in turn, after measuring the fp32 "
          f"matmul peak: {', '.join(f'{p:.0f}' for p in peaks)} GFLOP/s; % of the best, "
          f"{peak:.0f}):",
          "", C.markdown_table(header, body)]


# ------------------------------------------------------------------------------------- report
class Report:
  def __init__(self, *, flops: float, images: int, peak: float):
    self.flops, self.images, self.peak = flops, images, peak
    self.rows: list[dict] = []
    self.baselines: dict[str, float] = {}

  def add(self, section: str, name: str, r: dict, *, ref_values: dict | None = None):
    pps = r["points"] / r["seconds"]
    gflops = pps * self.images * self.flops / 1e9
    dev = rel = float("nan")
    if ref_values is not None:
      pairs = [(ref_values[tuple(np.round(c, 6))], lo) for c, lo in zip(r["coords"], r["loss"],
                                                                         strict=True)
               if tuple(np.round(c, 6)) in ref_values]
      if pairs:
        ref, lo = np.asarray(pairs, np.float64).T
        dev = float(np.max(np.abs(ref - lo)))
        rel = float(np.max(np.abs(ref - lo) / np.maximum(np.abs(ref), 1.0)))
    row = {"section": section, "variant": name, "points": r["points"], "s": r["seconds"],
           "points/s": pps, "images/s": pps * self.images, "GFLOP/s": gflops,
           "% peak": 100 * gflops / self.peak, "compile s": r["compile_s"],
           "peak MB": r["peak_mb"], "program MB": r["program_mb"], "max |dloss|": dev,
           "max rel dloss": rel}
    self.rows.append(row)
    print(f"  {name:<44} {r['points']:4d} pts {r['seconds']:7.2f} s  {pps:7.3f} pts/s  "
          f"{gflops:7.1f} GFLOP/s ({row['% peak']:.0f} % peak)  compile {r['compile_s']:.1f} s  "
          f"RSS +{r['peak_mb']:.0f} MB  program {r['program_mb']:.0f} MB  max|dloss| {dev:.2g}",
          flush=True)
    return row

  def table(self, section: str) -> str:
    rows = [r for r in self.rows if r["section"] == section]
    header = ["variant", "points", "s", "points/s", "images/s", "GFLOP/s", "% peak"]
    header += [f"x {b}" for b in self.baselines]
    header += ["compile s", "RSS peak +MB", "XLA program MB", "max abs dloss",
               "max rel dloss"]
    body = []
    for r in rows:
      line = [r["variant"], r["points"], r["s"], r["points/s"], r["images/s"], r["GFLOP/s"],
              r["% peak"]]
      line += [r["points/s"] / v for v in self.baselines.values()]
      line += [r["compile s"], r["peak MB"], r["program MB"], r["max |dloss|"],
               r["max rel dloss"]]
      body.append(line)
    return C.markdown_table(header, body)


def gains(rep: Report, *, best_b: int, cands, k: int, sub_rows: int) -> list[str]:
  """Ratios of points/s between variants that differ in one choice (rows missing are skipped)."""
  pps = {r["variant"]: r["points/s"] for r in rep.rows}
  row = f", {sub_rows} row(s)"

  def get(name):
    return pps.get(name) or pps.get(name + row)

  one = {b: get(f"surface_grid map, b={b} (1 device, BN folded)") for b in cands}
  one[best_b] = get(f"surface_grid map, b={best_b}, BN folded")
  out = []
  have = {b: v for b, v in one.items() if v}
  if len(have) > 1:
    worst = min(have, key=have.get)
    out.append(f"batch size {best_b} (chosen by choose_batch_size) vs {worst} (worst): "
               f"{have[best_b] / have[worst]:.2f}x; vs 128: "
               f"{have[best_b] / have.get(128, have[best_b]):.2f}x")
  pairs = [
    ("BatchNorm folded into the convolutions", f"surface_grid map, b={best_b}, BN folded",
     f"surface_grid map, b={best_b}"),
    ("oneDNN convolutions instead of XLA's (landscape_jax.backends.cpu.onednn)",
     f"surface_grid map, b={best_b}, BN folded",
     f"surface_grid map, b={best_b}, BN folded, XLA convs"),
    (f"{k}-device host mesh (points in parallel)", f"surface_grid map, b={best_b}, {k}-device mesh",
     f"surface_grid map, b={best_b}"),
  ]
  for label, a, b in pairs:
    if get(a) and get(b):
      out.append(f"{label}: {get(a) / get(b):.2f}x")
  tag_rows = [n for n in pps if n.endswith("one chunk per row(s)")]
  if tag_rows and get(f"surface_grid map, b={best_b}"):
    single = get("surface_grid map, b=" + tag_rows[0].split("b=", 1)[1].split(", 1 device")[0]
                 .replace(", folded", ", BN folded"))
    if single:
      out.append(f"one chunk per row instead of one point per chunk (fewer host round trips): "
                 f"{pps[tag_rows[0]] / single:.2f}x")
  ref = pps.get("JAX ref: per-point loop, b=128")
  if ref:
    b128 = one.get(128)
    if b128:
      out.append(f"surface_grid (one compiled evaluation, no per-point dispatch or transfer) vs "
                 f"the JAX per-point loop, both b=128: {b128 / ref:.2f}x")
    for name, label in (("JAX ref, jitted in-place (donated) assignment",
                         "donated in-place weight assignment in the loop"),
                        ("JAX ref, coordinates baked in (recompiles per point)",
                         "recompiling per point (anti-pattern)")):
      if name in pps:
        out.append(f"{label}: {pps[name] / ref:.2f}x the plain loop")
  vm = [n for n in pps if n.startswith("surface_grid vmap") and "XLA convs" not in n]
  vx = [n for n in pps if n.startswith("surface_grid vmap") and "XLA convs" in n]
  if vm and vx:
    out.append(f"vmapped points kept on oneDNN (a lax.map of per-point convolutions) instead of "
               f"XLA's grouped convolutions: {pps[vm[0]] / pps[vx[0]]:.2f}x")
  lm = [n for n in pps if "lax.map batch_size=2" in n]
  base = max((v for v in have.values()), default=None)
  if vm and base:
    out.append(f"vmap over points instead of lax.map: {pps[vm[0]] / base:.2f}x")
  if lm and base:
    out.append(f"lax.map(batch_size=2) (2 points vmapped per step): {pps[lm[0]] / base:.2f}x")
  return out


def values_by_coord(r) -> dict:
  return {tuple(np.round(c, 6)): float(v) for c, v in zip(r["coords"], r["loss"], strict=True)}


# ------------------------------------------------------------------------------ error control
def error_controlled_section(args, out_lines):
  """51 x 51 surface of a small trained MLP: exact vs error-controlled (plain, anchored)."""
  import optax

  base = lj.load("digits", "train")
  model = lj.get_model("mlp", num_classes=10)
  x = lj.data.normalize_images(jnp.asarray(base.images), base.mean, base.std)
  params = model.init(jax.random.key(0), x[:2])["params"]
  opt = optax.adam(1e-2)

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(lambda p: jnp.mean(lj.cross_entropy(model.apply(
      {"params": p}, x), jnp.asarray(base.labels))))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  for _ in range(args.error_train_steps):
    params, state, _ = step(params, state)
  # A large evaluation split: noisy copies of the digits (what the tolerance saves on).
  rng = np.random.default_rng(0)
  idx = rng.integers(0, len(base), args.error_images)
  noisy = np.clip(base.images[idx].astype(np.float32) + rng.normal(0, 24, base.images[idx].shape),
                  0, 255).astype(np.uint8)
  data = lj.Dataset(images=noisy, labels=base.labels[idx], num_classes=10, mean=base.mean,
                    std=base.std, name="digits-noisy", split="train")
  k1, k2 = jax.random.split(jax.random.key(1))
  dirs = tuple(lj.normalize_directions(lj.random_direction(k, params), params, norm="filter",
                                       ignore="biasbn") for k in (k1, k2))
  g = np.linspace(-1, 1, args.error_grid)
  exact_fn = lj.make_metric_fn(model, data, batch_size=args.error_batch)
  engine = lj.EngineOptions(map_mode="map", chunk_size=min(args.error_grid ** 2, 256),
                            progress=False)

  def plain():
    return lj.make_error_controlled_metric_fn(model, data, tol=args.error_tol,
                                              batch_size=args.error_batch)

  def anchored():  # the anchors' exact passes are part of the timed work
    return lj.make_error_controlled_metric_fn(
      model, data, tol=args.error_tol, batch_size=args.error_batch, progress=False,
      anchors=lj.anchor_plane(params, dirs, g, g, stride=args.error_anchor_stride))

  variants = {"exact": lambda: exact_fn, f"plain, tol {args.error_tol}": plain,
              f"anchored (stride {args.error_anchor_stride}), tol {args.error_tol}": anchored}
  res = {}
  for name, make in variants.items():
    fn = make()  # compile on a small grid first (the anchors of the warm-up are not timed)
    lj.surface_grid(fn, params, dirs, g[:3], g[:1], engine=engine)
    t = time.perf_counter()
    fn = make()
    res[name] = (lj.surface_grid(fn, params, dirs, g, g, engine=engine), time.perf_counter() - t)
  ex, t_ex = res.pop("exact")
  rows, verdicts = [], []
  for name, (est, t_est) in res.items():
    dev = np.abs(est["loss"] - ex["loss"])
    n_used = est["num_examples"]
    rows.append([name, t_ex, t_est, t_ex / t_est, float(dev.max()),
                 float(dev.max() / args.error_tol), float(n_used.mean()),
                 float(est["loss_sem"].max()), int(np.sum(n_used >= len(data)))])
    fast, close = t_ex / t_est >= 10, dev.max() <= 3 * args.error_tol
    verdicts.append(f"{name}: speed-up >= 10 {'met' if fast else 'NOT met'}, "
                    f"max deviation <= 3 tol {'met' if close else 'NOT met'}")
  n_anchor = len(lj.error_control.anchor_axis(g, stride=args.error_anchor_stride)) ** 2
  lines = [
    f"Error-controlled surface ({args.error_grid} x {args.error_grid}, MLP trained "
    f"{args.error_train_steps} Adam steps on digits, {args.error_images} noisy digits, batches of "
    f"at most {args.error_batch}; `make_error_controlled_metric_fn(tol={args.error_tol})` plain "
    f"and with anchored control variates ({n_anchor} anchors, their exact passes included in the "
    "time) vs exact `make_metric_fn`, all `surface_grid` with `map_mode='map'`):",
    "",
    C.markdown_table(
      ["variant", "exact s", "estimated s", "speed-up", "max abs dloss", "max / tol",
       "mean examples/point", "max loss_sem", "points using the whole split"], rows),
    "",
    "Targets: " + "; ".join(verdicts) + ".",
  ]
  print("\n".join(lines), flush=True)
  out_lines += ["", *lines]


# --------------------------------------------------------------------------------------- main
def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--model56", default="resnet56", help="the deeper model of the 5 x 5 section")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--images", type=int, default=1000)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--grid", type=int, default=11)
  p.add_argument("--grid56", type=int, default=5)
  p.add_argument("--baseline_rows", type=int, default=1,
                 help="grid rows (of --grid points) timed for the per-point baselines")
  p.add_argument("--sweep_rows", type=int, default=1, help="grid rows per sweep variant")
  p.add_argument("--rounds", type=int, default=3,
                 help="head-to-head rounds (baselines and surface_grid in turn; medians)")
  p.add_argument("--batch_sizes", default="32,64,128,256")
  p.add_argument("--vmap_chunk", type=int, default=4)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--matmul_precision", default=None,
                 help="jax_default_matmul_precision, e.g. tensorfloat32 on GPUs")
  p.add_argument("--sections", default="reference,torch,surface,resnet56,error")
  p.add_argument("--error_grid", type=int, default=51)
  p.add_argument("--error_tol", type=float, default=0.01)
  p.add_argument("--error_images", type=int, default=50000)
  p.add_argument("--error_batch", type=int, default=250)
  p.add_argument("--error_anchor_stride", type=int, default=5,
                 help="anchors of the control variate on every k-th grid line")
  p.add_argument("--error_train_steps", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--host_devices", type=int, default=1,
                 help="CPU only: simulated host devices for the mesh variants (they split the "
                      "cores, so the peak and baselines run on fewer; default 1: none)")
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.model56, args.width = "resnet8", "resnet14", 0.5
    args.images, args.image_size, args.grid, args.grid56 = 48, 16, 3, 2
    args.baseline_rows, args.sweep_rows, args.batch_sizes, args.vmap_chunk = 1, 1, "16,32", 3
    args.error_grid, args.error_images, args.error_batch = 5, 2000, 100
    args.error_train_steps, args.error_tol, args.rounds = 20, 0.05, 2
  return C.finish_args(args)


def depth_of(name: str) -> int:
  digits = "".join(ch for ch in name if ch.isdigit())
  if not name.startswith("resnet") or not digits:
    raise ValueError(f"The benchmark's PyTorch twin is a CIFAR ResNet; got --model {name}.")
  return int(digits)


def main(argv=None):
  args = parse_args(argv)
  if args.matmul_precision:
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
  sections = set(args.sections.split(","))
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  info = C.announce_machine()
  t_start = time.perf_counter()

  peak = C.matmul_peak(n=512 if args.tiny else 2048)
  peak_torch = C.torch_matmul_peak(n=512 if args.tiny else 2048) if torch is not None else None
  print(f"fp32 matmul peak: JAX {peak:.1f} GFLOP/s"
        + (f", PyTorch {peak_torch:.1f} GFLOP/s" if peak_torch else ""), flush=True)

  data = synthetic_dataset(args.images, (args.image_size, args.image_size, 3), seed=args.seed)
  model, variables, dirs, flops = setup(args.model, data, seed=args.seed, dtype=dtype,
                                          width=args.width)
  center, bs = variables["params"], variables["batch_stats"]
  x = jnp.zeros((2, *data.image_shape))
  xla = C.xla_flops(inference_apply(model), variables, x)
  print(f"{args.model}: {flops / 1e6:.2f} MFLOP per image (analytic; XLA cost analysis "
        f"{(xla or np.nan) / 1e6:.2f}), {lj.trees.num_params(center) / 1e6:.3f} M params",
        flush=True)
  g = np.linspace(-1, 1, args.grid)
  rep = Report(flops=flops, images=args.images, peak=peak)
  notes = []
  torch_ok = torch is not None and "torch" in sections
  depth = depth_of(args.model)

  if torch_ok:
    dlogit = check_torch_logits(model, variables, data, depth, args.width,
                                "cuda" if torch.cuda.is_available() else "cpu")
    print(f"PyTorch twin: max |logit difference| {dlogit:.2e}", flush=True)
    notes.append(f"PyTorch twin: max abs logit difference to Flax {dlogit:.1e} (16 images).")
    if dtype == jnp.float32 and dlogit > 1e-4:
      raise AssertionError(f"PyTorch and Flax logits differ by {dlogit:.2e} > 1e-4.")
  elif "torch" in sections:
    print("PyTorch is not installed: skipping the PyTorch baseline "
          "(pip install torch==2.13.0, or the 'bench' extra).", flush=True)
    notes.append("PyTorch not installed: no PyTorch baseline.")

  # -- batch size chosen by measurement (also the batch sweep's data)
  cands = [int(b) for b in args.batch_sizes.split(",")]

  def make_metric(b, fold=True, convs="auto"):
    return lj.make_metric_fn(model, data, batch_stats=bs, batch_size=b, fold_batchnorm=fold,
                             cpu_convolutions=convs)

  t = time.perf_counter()
  best_b, btimes = autotune.choose_batch_size(make_metric, center, candidates=cands)
  tune_s = time.perf_counter() - t
  print(f"choose_batch_size: {best_b} ({', '.join(f'{b}: {s:.3f} s' for b, s in btimes.items())};"
        f" {tune_s:.1f} s)", flush=True)

  # -- main surface: the whole grid, lax.map, chosen batch size, BN folded or not (best of both)
  print(f"\n{args.model} {args.grid} x {args.grid}, {args.images} images:", flush=True)
  metric = make_metric(best_b, fold=False)
  fused_metric = make_metric(best_b)  # make_metric_fn's default: BatchNorm folded, oneDNN on CPU
  xla_metric = make_metric(best_b, convs="xla")  # BatchNorm folded, XLA's convolutions
  # Candidates timed on --sweep_rows rows; the fastest evaluates the whole grid. On the CPU, a mesh
  # of host devices (--host_devices) runs points concurrently (inter-op instead of intra-op).
  sub = g[: args.sweep_rows]
  ndev = min(args.host_devices, jax.device_count())
  mesh = lj.make_mesh(ndev) if ndev > 1 else None
  gx = g[: max(ndev, len(g) // ndev * ndev)]  # rows of a multiple of ndev points: no padding
  configs = {f"b={best_b}": (metric, None), f"b={best_b}, BN folded": (fused_metric, None),
             f"b={best_b}, BN folded, XLA convs": (xla_metric, None)}
  if mesh is not None:
    configs[f"b={best_b}, {ndev}-device mesh"] = (metric, mesh)
    configs[f"b={best_b}, BN folded, {ndev}-device mesh"] = (fused_metric, mesh)
  row_runs = {name: run_surface(m, center, dirs, gx, sub, mesh=ms)
              for name, (m, ms) in configs.items()}
  best_cfg = min(row_runs, key=lambda n: row_runs[n]["seconds"])
  use_fused = "folded" in best_cfg
  best_metric, best_mesh = configs[best_cfg]
  main_name = f"surface_grid map, {best_cfg}, whole grid"
  main = run_surface(best_metric, center, dirs, g, g, mesh=best_mesh)
  ref_vals = values_by_coord(main)

  # -- head to head: the baselines and surface_grid on the same grid row(s), in turn, round after
  # round (with the matmul peak), so that a change of machine load hits every variant alike.
  rows = g[: args.baseline_rows]
  coords = lj.surface.grid_coordinates(g, rows)
  variants = {}
  if "reference" in sections:
    variants["JAX ref"] = lambda: run_jax_reference(model, variables, dirs, data, coords)
  if torch_ok:
    variants["PyTorch"] = lambda: run_torch_reference(variables, dirs, data, coords, depth=depth,
                                                      width=args.width)
  h2h_names = {f"surface_grid, b={best_b}, BN folded (default)": fused_metric,
               f"surface_grid, b={best_b}, BN folded, XLA convs": xla_metric,
               f"surface_grid, b={best_b}, not folded": metric}
  for name, m in h2h_names.items():
    variants[name] = functools.partial(run_surface, m, center, dirs, g, rows)
  print(f"\nhead to head, {args.rounds} rounds of {len(coords)} points each:", flush=True)
  runs, peaks = head_to_head(variants, rounds=args.rounds,
                             peak_fn=lambda: C.matmul_peak(n=512 if args.tiny else 2048))
  peak = rep.peak = max(peak, *peaks)  # every "% peak" below: of the best measurement in the run
  h2h_lines = head_to_head_table(runs, peaks, flops=flops, images=args.images)
  print("\n".join(h2h_lines), flush=True)
  baselines = {k: median_run(runs[k]) for k in ("JAX ref", "PyTorch") if k in runs}
  rep.baselines = {k: v["points"] / v["seconds"] for k, v in baselines.items()}
  sec = "resnet"
  for k, v in baselines.items():
    rep.add(sec, f"{k}: per-point loop, b=128 (median round)", v, ref_values=ref_vals)
  for name in h2h_names:
    rep.add(sec, f"{name} (median round)", median_run(runs[name]), ref_values=ref_vals)
  rep.add(sec, main_name, main, ref_values=ref_vals)
  for name, r in row_runs.items():
    rep.add(sec, f"surface_grid map, {name}, {len(sub)} row(s)", r, ref_values=ref_vals)

  if "surface" in sections:
    for b in cands:
      if b == best_b:
        continue
      r = run_surface(make_metric(b), center, dirs, gx, sub)
      rep.add(sec, f"surface_grid map, b={b} (1 device, BN folded)", r, ref_values=ref_vals)
    m_best = fused_metric if use_fused else metric
    tag = f"b={best_b}{', folded' if use_fused else ''}, 1 device"
    r = run_surface(m_best, center, dirs, gx, sub, chunk_size=len(gx) * len(sub))
    rep.add(sec, f"surface_grid map, {tag}, one chunk per row(s)", r, ref_values=ref_vals)
    r = run_surface(m_best, center, dirs, g[: 2 * args.vmap_chunk], sub[:1], map_mode="map",
                    chunk_size=2, point_batch=2)
    rep.add(sec, f"surface_grid map, {tag}, lax.map batch_size=2", r, ref_values=ref_vals)
    r = run_surface(m_best, center, dirs, g[: 2 * args.vmap_chunk], sub[:1], map_mode="vmap",
                    chunk_size=args.vmap_chunk)
    rep.add(sec, f"surface_grid vmap, {tag}, chunk {args.vmap_chunk}", r, ref_values=ref_vals)
    if use_fused and onednn_build.resolve("auto"):  # vmapped convolutions on XLA: grouped convs
      r = run_surface(xla_metric, center, dirs, g[: 2 * args.vmap_chunk], sub[:1], map_mode="vmap",
                      chunk_size=args.vmap_chunk)
      rep.add(sec, f"surface_grid vmap, {tag}, XLA convs, chunk {args.vmap_chunk}", r,
              ref_values=ref_vals)
    if "reference" in sections:
      coords = lj.surface.grid_coordinates(g, g[:1])
      r = run_jax_reference(model, variables, dirs, data, coords, donate=True)
      rep.add(sec, "JAX ref, jitted in-place (donated) assignment", r, ref_values=ref_vals)
      coords = lj.surface.grid_coordinates(g[:2], g[:1])
      r = run_recompiling(model, variables, dirs, data, coords)
      rep.add(sec, "JAX ref, coordinates baked in (recompiles per point)", r, ref_values=ref_vals)

  # -- deeper model, smaller grid
  sec56 = None
  if "resnet56" in sections:
    sec56 = "resnet56"
    print(f"\n{args.model56} {args.grid56} x {args.grid56}:", flush=True)
    m56, v56, dirs56, flops56 = setup(args.model56, data, seed=args.seed, dtype=dtype,
                                       width=args.width)
    g56 = np.linspace(-1, 1, args.grid56)
    rep56 = Report(flops=flops56, images=args.images, peak=peak)
    b56, bt56 = autotune.choose_batch_size(
      lambda b: lj.make_metric_fn(m56, data, batch_stats=v56["batch_stats"], batch_size=b),
      v56["params"], candidates=[b for b in cands if b >= 64] or cands, repeats=2)
    main56 = run_surface(lj.make_metric_fn(m56, data, batch_stats=v56["batch_stats"],
                                           batch_size=b56, fold_batchnorm=use_fused),
                         v56["params"], dirs56, g56, g56, mesh=best_mesh)
    ref56 = values_by_coord(main56)
    # head to head on the first grid row, as for the main model
    coords = lj.surface.grid_coordinates(g56, g56[:1])
    var56 = {}
    if "reference" in sections:
      var56["JAX ref"] = lambda: run_jax_reference(m56, v56, dirs56, data, coords)
    if torch_ok:
      var56["PyTorch"] = lambda: run_torch_reference(v56, dirs56, data, coords, depth=depth_of(
        args.model56), width=args.width)
    tag56 = best_cfg.replace(f"b={best_b}", f"b={b56}")
    for convs, suffix in (("auto", ""), ("xla", ", XLA convs")):
      var56[f"surface_grid, {tag56}{suffix}"] = functools.partial(
        run_surface, lj.make_metric_fn(m56, data, batch_stats=v56["batch_stats"], batch_size=b56,
                                       fold_batchnorm=use_fused, cpu_convolutions=convs),
        v56["params"], dirs56, g56, g56[:1])
    print(f"\nhead to head ({args.model56}), {args.rounds} rounds of {len(coords)} points each:",
          flush=True)
    runs56, peaks56 = head_to_head(var56, rounds=args.rounds,
                                   peak_fn=lambda: C.matmul_peak(n=512 if args.tiny else 2048))
    h2h56 = head_to_head_table(runs56, peaks56, flops=flops56, images=args.images)
    rep56.peak = max(peak, *peaks56)
    print("\n".join(h2h56), flush=True)
    base56 = {k: median_run(runs56[k]) for k in ("JAX ref", "PyTorch") if k in runs56}
    rep56.baselines = {k: v["points"] / v["seconds"] for k, v in base56.items()}
    for k, v in base56.items():
      rep56.add(sec56, f"{k}: per-point loop, b=128 (median round)", v, ref_values=ref56)
    rep56.add(sec56, f"surface_grid map, {tag56}, whole grid", main56, ref_values=ref56)
    notes.append(f"{args.model56}: {flops56 / 1e6:.1f} MFLOP per image; choose_batch_size: "
                 + ", ".join(f"{b}: {s:.2f} s" for b, s in bt56.items()))

  # -- summary
  lines = [C.format_info(info), "",
           f"Measured fp32 matmul peak (same run, best of {1 + len(peaks)} measurements; the "
           f"{args.model} tables' % peak is of it): JAX {peak:.1f} GFLOP/s"
           + (f", PyTorch {peak_torch:.1f} GFLOP/s" if peak_torch else "") + ".",
           f"Workload: {args.model} (width {args.width}), {args.grid} x {args.grid} grid, "
           f"{args.images} synthetic {args.image_size}x{args.image_size}x3 images, "
           f"dtype {args.dtype}; {flops / 1e6:.2f} MFLOP per image (analytic, 2 per multiply-add "
           f"of the convolutions and matmuls; XLA's cost analysis: {(xla or np.nan) / 1e6:.2f})."
           f" Baselines timed on {args.baseline_rows} grid row(s), sweeps on {args.sweep_rows}.",
           f"choose_batch_size: best {best_b} ("
           + ", ".join(f"{b}: {s:.3f} s" for b, s in btimes.items()) + f"), {tune_s:.1f} s.",
           "", *h2h_lines, "", "All variants:", "", rep.table(sec)]
  if sec56:
    lines += ["", f"{args.model56}, {args.grid56} x {args.grid56}:", "", *h2h56, "",
              rep56.table(sec56)]
  lines += ["", *notes]
  main_row = next(r for r in rep.rows if r["variant"] == main_name)
  summary = [f"Main ({main_name}): {main_row['points/s']:.3f} points/s, "
             f"{main_row['GFLOP/s']:.1f} GFLOP/s = {main_row['% peak']:.0f} % of the matmul peak"]
  for k, v in rep.baselines.items():
    summary.append(f"{main_row['points/s'] / v:.2f}x the {k} strategy")
  lines += ["", "; ".join(summary) + "."]
  print("\n" + "; ".join(summary) + ".", flush=True)
  bought = gains(rep, best_b=best_b, cands=cands, k=ndev, sub_rows=len(sub))
  if bought:
    lines += ["", "What each choice bought (ratio of points/s, same run):", "",
              *[f"- {b}" for b in bought]]
    print("\n".join(bought), flush=True)

  if "error" in sections:
    error_controlled_section(args, lines)
  total = time.perf_counter() - t_start
  lines += ["", f"Total benchmark time {total:.0f} s; load average at the end "
            "{:.2f} {:.2f} {:.2f}.".format(*os.getloadavg())]
  print(f"total {total:.0f} s", flush=True)
  if args.record:
    C.append_results(f"bench_surface.py ({info['date']})", "\n".join(lines))
    print(f"appended to {C.RESULTS}")
  return rep


if __name__ == "__main__":
  main()
