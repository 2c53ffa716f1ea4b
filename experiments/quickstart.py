r"""The landscape-jax tour: every method of the library on the embedded `digits` data.

  python experiments/quickstart.py --workdir=runs/quickstart          # the tour (time: README)
  python experiments/quickstart.py --workdir=/tmp/qs --tiny           # tiny sizes (the tests)

Trains two small ResNets from different seeds, then, each step with its figures and numbers:
 1. 1-D filter-normalised plot around model A and the two-model interpolation (Li et al. 2018);
 2. a 2-D filter-normalised surface (contour, filled contour, heat map, 3-D, VTK), and the same
    plane sampled adaptively (landscape_jax.core.adaptive) with the points each used;
 3. a Bezier curve between A and B, its loss against the straight line's, and the plane through
    its three control points (Garipov et al. 2018);
 4. weight matching of B to A and the barrier before and after (Ainsworth et al. 2023);
 5. the Hessian's top eigenvalues, trace and spectral density at A (PyHessian);
 6. a Fast Geometric Ensemble from A against its members (Garipov et al. 2018);
 7. the PCA plane of A's training trajectory with the path over the loss contours (Li et al.);
 8. sharp vs flat: small- and large-batch MLPs, a standard and an adaptive worst-case sharpness,
    before and after a rescaling that leaves each function unchanged (experiments/_sharp_flat.py).

Writes every figure (PNG + PDF, and its interactive twin as ``<name>.plotly.json``),
``results/<step>.json`` and ``report.html`` (one offline page: rotatable surfaces, hover values)
into --workdir.
Each finished step is kept: a rerun (e.g. after an interruption) reuses it, long steps resume
from their own stores, and a rerun with a different configuration is refused.

What identifies a finished step: ``config.json`` records the configuration below plus the sha256
digests (`identity.tree_digest`) of the images and labels of the `digits` splits the tour loads.
Everything else a step computes from is determined by these: the models are trained from the
configured seeds, every direction, curve, permutation, probe and FGE run is drawn from fixed keys,
and each step's inputs are earlier steps' outputs kept in the same --workdir (the training runs,
curve and FGE workdirs resume on their own exact identities). The embedded data are the only
external input, hence their digests. Not recorded, by design: the library's own code version
(as for every identity in landscape-jax); after changing it, use a new --workdir. The files are
written with `fileio` (atomic, never through a planted symlink); a rerun with another
configuration or other data is refused (`store.check_or_write_config`).
"""

import json
import os
import sys
import time

import _common
import ml_collections
from absl import flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Output directory.")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny sizes, a short check (the tests use it).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def get_config(tiny: bool) -> ml_collections.ConfigDict:
  """Sizes of every step; `tiny` shrinks them to a short check (the tests run it)."""
  c = ml_collections.ConfigDict()
  c.model = "resnet8"
  c.model_kwargs = {"width": 1} if not tiny else {"width": 0.5}
  c.seeds = (0, 1)
  c.epochs = 3 if tiny else 10
  c.batch_size = 64
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.train_subset = 384 if tiny else 0         # examples trained on (and BN statistics); 0: all
  c.eval_subset = 128 if tiny else 0          # 0: whole splits
  c.points_1d = 7 if tiny else 41             # Li et al.: 51 points on [-1, 1]
  c.points_interp = 9 if tiny else 41         # Li et al.: 401 points on [-0.5, 1.5]
  c.points_2d = 5 if tiny else 21             # Li et al.: 51 x 51 on [-1, 1]^2
  c.curve_epochs = 2 if tiny else 12
  c.curve_points = 7 if tiny else 25          # Garipov et al.: 61
  c.plane_points = 5 if tiny else 11          # Garipov et al.: 21 on [-0.2, 1.2]
  c.lanczos_steps = 10 if tiny else 30
  c.trace_probes = 8 if tiny else 30
  c.hessian_examples = 128 if tiny else 512  # curvature on a fixed subset of the train split
  c.fge_cycles = 2 if tiny else 4
  c.fge_cycle_epochs = 2
  c.fge_lr1 = 0.05                            # Garipov et al. (lr_2 here 1e-3)
  c.pca_points = 5 if tiny else 21
  c.tiny = tiny                               # sizes of the sharp-vs-flat step
  return c


_common.parse_flags(config_fn=lambda: get_config(tiny="--tiny" in sys.argv))  # before JAX

import jax
import numpy as np
from _sharp_flat import tour_step
from configs import defaults

import landscape_jax as lj
from landscape_jax import (
  batchnorm,
  checkpoints,
  curve_training,
  curves,
  ensembles,
  fileio,
  permutations,
  plotting,
  training,
)


class Tour:
  """Runs the steps, caching each one's numbers in ``results/<name>.json``."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, progress: bool):
    self.workdir, self.c, self.progress = workdir, config, progress
    self.sections: list[dict] = []
    os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
    self.train_ds = lj.load("digits", "train", subset=config.train_subset or None)
    self.test_ds = lj.load("digits", "test")
    self.check_config()
    self.model = lj.get_model(config.model, num_classes=10, **dict(config.model_kwargs))
    n = config.eval_subset
    self.eval_splits = {"train": self.train_ds.subset(slice(0, n or None)),
                        "test": self.test_ds.subset(slice(0, n or None))}

  def check_config(self):
    digest = lambda ds: lj.identity.tree_digest({"images": ds.images, "labels": ds.labels})
    current = {**json.loads(self.c.to_json()), "train_data_sha256": digest(self.train_ds),
               "test_data_sha256": digest(self.test_ds)}
    lj.store.check_or_write_config(
      self.path("config.json"), current, what="a tour run",
      remedy="Use a new --workdir (or move the old one away) instead of mixing results.")

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def figures(self, name: str, caption: str, static=None, interactive=None) -> list:
    """Saves a figure (PNG + PDF) and its interactive twin; [[file, caption], ...] for the report.
    `static` may be a {suffix: Figure} dict (plot_2d_all), whose first figure gets the caption."""
    out = []
    if interactive is not None:
      out.append([os.path.basename(plotting.save_interactive(interactive, self.path(name))),
                  caption])
    if static is not None:
      files = [f for f in plotting.save(static, self.path(name)) if f.endswith(".png")]
      out += [[os.path.basename(f), caption if k == 0 else ""] for k, f in enumerate(files)]
    return out

  def step(self, name: str, title: str, text: str, fn):
    """Runs `fn() -> (numbers, figures)` unless ``results/<name>.json`` exists; adds a section."""
    result_path = self.path("results", f"{name}.json")
    if os.path.exists(result_path):
      out = lj.store.read_json(result_path, remedy="Move it away to recompute this step (the "
                               "other steps' results are kept).")
      print(f"[{name}] reusing finished results")
    else:
      print(f"[{name}] {title}")
      start = time.time()
      numbers, figures = fn()
      out = {"numbers": lj.store.jsonable(numbers), "figures": figures,
             "seconds": round(time.time() - start, 1)}
      fileio.atomic_write_json(result_path, out)
    for k, v in out["numbers"].items():
      print(f"    {k}: {v:.4g}" if isinstance(v, float) else f"    {k}: {v}")
    self.sections.append({"title": title, "text": text, "figures": out["figures"],
                          "table": {**out["numbers"], "time (s)": out["seconds"]}})
    return out["numbers"]

  # -- the models -------------------------------------------------------------------------------
  def train_models(self):
    def run():
      numbers = {}
      for seed, tag in zip(self.c.seeds, "ab", strict=True):
        config = defaults.train(
          model=self.c.model, model_kwargs=dict(self.c.model_kwargs), seed=seed,
          num_epochs=self.c.epochs, batch_size=self.c.batch_size,
          learning_rate=self.c.learning_rate, weight_decay=self.c.weight_decay,
          schedule="cosine", momentum=0.9, nesterov=True, checkpoint_every_epochs=1)
        _, records = training.train(self.model, self.train_ds, self.test_ds, config=config,
                                    workdir=self.path(f"model_{tag}"), progress=self.progress)
        numbers[f"model {tag.upper()} test accuracy"] = records[-1]["test_accuracy"]
        numbers[f"model {tag.upper()} train loss"] = records[-1]["train_loss"]
      return numbers, []

    self.step("train", "Two ResNets from different seeds",
              f"{self.c.model} trained on digits (seeds {list(self.c.seeds)}) with SGD, Nesterov "
              "momentum and a cosine schedule; checkpoints after every epoch form the trajectory.",
              run)
    self.var_a = checkpoints.load_variables(self.path("model_a", "checkpoints"))
    self.var_b = checkpoints.load_variables(self.path("model_b", "checkpoints"))
    self.bn_template = self.var_a.get("batch_stats")

  def metric_fn(self, recompute_bn: bool, batch_stats=None):
    """Train/test loss and accuracy; BN statistics of the centre, or recomputed per point."""
    if recompute_bn and self.bn_template is not None:
      return batchnorm.make_recompute_metric_fn(
        self.model, self.eval_splits, train_data=self.train_ds, batch_stats=self.bn_template,
        batch_size=256, bn_batch_size=128)
    return lj.make_metric_fn(self.model, self.eval_splits, batch_stats=batch_stats,
                             batch_size=256)

  # -- 1. Li et al.: 1-D plots and interpolation ------------------------------------------------
  def one_d(self):
    def run():
      params = self.var_a["params"]
      (d,) = lj.random_directions(jax.random.key(0), params, num=1, norm="filter",
                                  ignore="biasbn")
      xs = np.linspace(-1, 1, self.c.points_1d)
      res = lj.surface_grid(self.metric_fn(False, self.var_a.get("batch_stats")), params, d, xs,
                            store=self.path("stores", "line_1d"),
                            engine=lj.EngineOptions(progress=self.progress),
                            metadata={"direction_seed": 0, "norm": "filter"})
      figs = self.figures(
        "line_1d", "Loss and accuracy of model A at A + a d, d a filter-normalised random "
        "direction: A sits at a = 0.", plotting.plot_1d(
          xs, res, title="Model A along a filter-normalised direction", xlabel="step a along d"),
        plotting.interactive_lines(xs, res, xlabel="step a along d", marks={"A": 0},
                                   title="Model A along a filter-normalised direction"))
      alphas = np.linspace(-0.5, 1.5, self.c.points_interp)
      interp = lj.linear_path(self.metric_fn(True), self.var_a["params"], self.var_b["params"],
                              alphas, store=self.path("stores", "interpolation"),
                              engine=lj.EngineOptions(progress=self.progress))
      figs += self.figures(
        "interpolation", "Loss and accuracy on the straight line (1 - a) A + a B between the "
        "two trained models (A at a = 0, B at a = 1), BatchNorm statistics recomputed.",
        plotting.plot_interpolation(alphas, interp, labels=("A", "B"),
                                    title="Straight line from A to B"),
        plotting.interactive_lines(alphas, interp, xlabel="a", marks={"A": 0, "B": 1},
                                   title="Straight line from A to B"))
      b = lj.barriers(interp["train_loss"], alphas)
      mid = len(xs) // 2
      return ({"train loss at A": float(res["train_loss"][mid]),
               "train loss at x=+1": float(res["train_loss"][-1]),
               "interpolation barrier (train loss)": b["frankle"],
               "interpolation max test error": float(1 - np.nanmin(
                 interp["test_accuracy"][(alphas >= 0) & (alphas <= 1)]))},
              figs)

    self.step("line", "1-D plots: filter-normalised direction and two-model interpolation",
              "f(a) = L(A + a d) with a filter-normalised Gaussian direction (Li et al. 2018), "
              "and L((1 - a) A + a B) on [-0.5, 1.5] with BatchNorm statistics recomputed at "
              "every point.", run)

  # -- 2. Li et al.: 2-D surface ----------------------------------------------------------------
  def two_d(self):
    def run():
      params = self.var_a["params"]
      d1, d2 = lj.random_directions(jax.random.key(1), params, num=2, norm="filter",
                                    ignore="biasbn")
      xs = ys = np.linspace(-1, 1, self.c.points_2d)
      res = lj.surface_grid(self.metric_fn(False, self.var_a.get("batch_stats")), params,
                            (d1, d2), xs, ys,
                            engine=lj.EngineOptions(mesh=lj.make_mesh(), progress=self.progress),
                            store=self.path("stores", "surface_2d"),
                            metadata={"direction_seed": 1, "norm": "filter"})
      z = res["train_loss"]
      title = "Train loss of A over a filter-normalised plane"
      static = plotting.plot_2d_all(xs, ys, z, title=title, label="train loss",
                                    xlabel="a (along d1)", ylabel="b (along d2)")
      del static["2dheatmap"]
      figs = self.figures(
        "surface_3d", "Train loss of A at A + a d1 + b d2, d1 and d2 filter-normalised: a "
        "rotatable surface on a log scale (the buttons switch to the linear one).",
        interactive=plotting.interactive_surface(xs, ys, z, label="train loss", title=title,
                                                 xlabel="a", ylabel="b"))
      figs += self.figures(
        "surface", "The same plane as contours of log10(train loss); hover for values.",
        static, plotting.interactive_contour(xs, ys, z, label="train loss", xlabel="a",
                                             ylabel="b", points={"A": (0, 0)}, title=title))
      if np.isfinite(z).any():
        plotting.export_vtp(self.path("surface"), xs, ys, z, log=True, name="loss")
      return ({"min train loss": float(np.nanmin(res["train_loss"])),
               "max train loss": float(np.nanmax(res["train_loss"])),
               "grid points": int(res["train_loss"].size)},
              figs)

    self.step("surface", "2-D filter-normalised surface",
              "f(a, b) = L(A + a d1 + b d2) on a grid, evaluated in compiled, sharded chunks and "
              "stored resumably; also exported as surface.vtp for ParaView.", run)

  # -- 2b. Adaptive surface: the same plane at a fraction of the points --------------------------
  def adaptive_2d(self):
    """The surface step's plane sampled adaptively (`lj.adaptive_surface`) against its dense grid.

    Self-contained: reads the dense values from the surface step's store, and chooses the
    adaptive lattice so that its finest level is that dense grid (every sample is a grid point).
    """
    from matplotlib.figure import Figure

    def run():
      params = self.var_a["params"]
      d1, d2 = lj.random_directions(jax.random.key(1), params, num=2, norm="filter",
                                    ignore="biasbn")
      n = self.c.points_2d
      xs = ys = np.linspace(-1, 1, n)
      dense = lj.store.read(self.path("stores", "surface_2d")).values["train_loss"]
      initial, max_level = ((n - 1) // 4 + 1, 2) if (n - 1) % 4 == 0 else (n, 0)
      tol = 0.05  # coarse on purpose: the tour's grid is small
      res = lj.adaptive_surface(self.metric_fn(False, self.var_a.get("batch_stats")), params,
                                (d1, d2), (-1, 1), (-1, 1),
                                refinement=lj.Refinement(tol=tol, initial=initial,
                                                         max_level=max_level, key="train_loss",
                                                         max_value=5.0),
                                engine=lj.EngineOptions(mesh=lj.make_mesh(),
                                                        progress=self.progress),
                                store=self.path("stores", "adaptive_2d"),
                                metadata={"direction_seed": 1, "norm": "filter"})
      approx = res.to_grid(xs, ys, keys=["train_loss"])["train_loss"]
      low = np.isfinite(dense) & (dense < 5)
      fig = Figure(figsize=(10.5, 4.4), layout="constrained")
      ax1, ax2 = fig.subplots(1, 2)
      levels = plotting.contour_levels(np.ma.masked_invalid(dense), None)
      plotting.plot_contour(xs, ys, dense, levels=levels, label="train loss", ax=ax1)
      ax1.set_title(f"dense: {dense.size} points", fontsize=10)
      plotting.plot_contour(xs, ys, approx, levels=levels, label="train loss", ax=ax2,
                            samples=res.coords)
      ax2.set_title(f"adaptive (tol {tol}): {res.num_points} points", fontsize=10)
      figs = self.figures("surface_adaptive", "Train loss contours from the dense grid (left) "
                          "and from the adaptive samples (right, dots), on the same levels.", fig)
      return ({"dense grid points": int(dense.size), "adaptive points": res.num_points,
               "adaptive rounds": len(res.history) - 1,
               "max |train loss difference| where loss < 5": float(
                 np.max(np.abs(approx - dense)[low])) if low.any() else float("nan")},
              figs)

    self.step("adaptive", "Adaptive surface: the same plane at a fraction of the points",
              "The surface step's plane refined where the interpolation error is (quadtree "
              "cells split while the bilinear and Clough-Tocher interpolants disagree by more "
              "than the tolerance, landscape_jax.core.adaptive), against the dense grid; the "
              "dots are "
              "the evaluated points.", run)

  # -- 3. Garipov et al.: Bezier curve ----------------------------------------------------------
  def curve(self):
    def run():
      loss_fn = lj.make_loss_fn(self.model, mean=self.train_ds.mean, std=self.train_ds.std,
                                batch_stats=self.bn_template, train=self.bn_template is not None)
      settings = lj.CurveSettings(epochs=self.c.curve_epochs, num_bends=3, kind="bezier",
                                  batch_size=self.c.batch_size, learning_rate=0.03,
                                  weight_decay=self.c.weight_decay)
      curve, _ = curve_training.train_curve(
        loss_fn, self.var_a["params"], self.var_b["params"], self.train_ds, settings=settings,
        workdir=self.path("curve_training"), progress=self.progress)
      metric_fn = self.metric_fn(True)
      res = curves.evaluate_curve(metric_fn, curve, kind="bezier",
                                  num_points=self.c.curve_points,
                                  store=self.path("stores", "curve"),
                                  engine=lj.EngineOptions(progress=self.progress))
      title = "Curve against straight line, A (t = 0) to B (t = 1)"
      figs = self.figures(
        "curve_metrics", "Loss and error along the trained Bezier curve (blue) and the straight "
        "line (orange) between A and B; train solid, test dashed.",
        plotting.plot_curve_metrics(res["t"], res["curve"], res["line"], title=title),
        plotting.interactive_curve_metrics(res["t"], res["curve"], res["line"], title=title))
      w0, w1, w2 = (lj.trees.index(curve, i) for i in range(3))
      plane = curves.plane_basis(w0, w1, w2)
      grid = np.linspace(-0.2, 1.2, self.c.plane_points)
      pres = curves.evaluate_plane(metric_fn, plane, alphas=grid, betas=grid,
                                   store=self.path("stores", "plane"),
                                   engine=lj.EngineOptions(progress=self.progress))
      proj = np.stack([np.asarray(curves.project_to_plane(plane, w)) for w in (w0, w1, w2)])
      where = dict(curve_xy=curves.curve_in_plane(plane, curve), endpoints_xy=proj[[0, 2]],
                   bend_xy=proj[1], chord_xy=proj[[0, 2]], label="train loss",
                   title="Train loss over the plane through A, θ and B")
      figs += self.figures(
        "curve_plane", "Train loss over the plane through A, the bend θ and B at equal scales "
        "(u along B - A, v towards θ, distances in parameter space): the curve (solid) goes "
        "around the barrier that the straight line (dashed) crosses.",
        plotting.plot_curve_plane(pres["x"], pres["y"], pres["train_loss"],
                                  names=("A", "θ", "B"), **where),
        plotting.interactive_curve_plane(pres["x"], pres["y"], pres["train_loss"],
                                         names=("A", "θ", "B"), **where))
      s = res["summary"]
      return ({"curve max train loss": s["curve"]["train_loss"]["max"],
               "line max train loss": s["line"]["train_loss"]["max"],
               "curve barrier (train loss)": s["curve"]["train_loss"]["barrier"],
               "line barrier (train loss)": s["line"]["train_loss"]["barrier"],
               "curve max test error": s["curve"]["test_error"]["max"],
               "line max test error": s["line"]["test_error"]["max"]},
              figs)

    self.step("curve", "Mode connectivity: a Bezier curve from A to B",
              "phi(t) = (1-t)^2 A + 2t(1-t) θ + t^2 B trained with the endpoints fixed "
              "(Garipov et al. 2018); BatchNorm statistics recomputed at every t; the plane "
              "through A, θ and B.", run)

  # -- 4. Ainsworth et al.: weight matching -----------------------------------------------------
  def align(self):
    def run():
      spec = lj.spec_for(self.c.model, self.var_a, num_classes=10,
                                   input_shape=self.train_ds.image_shape,
                                   **dict(self.c.model_kwargs))
      result = permutations.weight_matching(jax.random.key(0), spec, self.var_a, self.var_b)
      aligned = permutations.apply_permutation(spec, result.perm, self.var_b)
      alphas = np.linspace(0, 1, self.c.points_interp)
      metric_fn = self.metric_fn(True)
      before = lj.linear_path(metric_fn, self.var_a["params"], self.var_b["params"], alphas,
                              engine=lj.EngineOptions(progress=self.progress))
      after = lj.linear_path(metric_fn, self.var_a["params"], aligned["params"], alphas,
                             engine=lj.EngineOptions(progress=self.progress))
      runs = {"B as trained": before["train_loss"],
              "B permuted to match A": after["train_loss"]}
      title = "Interpolation A -> B before and after weight matching"
      figs = self.figures(
        "alignment", "Train loss on the straight line from A to B, with B as trained and with "
        "B's units permuted to match A's (the same function as B).",
        plotting.plot_barriers(alphas, runs, ylabel="train loss", title=title),
        plotting.interactive_lines(alphas, runs, xlabel="a", ylabel="train loss",
                                   marks={"A": 0, "B": 1}, title=title))
      bb, ba = lj.barriers(before["train_loss"], alphas), lj.barriers(after["train_loss"], alphas)
      return ({"barrier before (train loss)": bb["frankle"],
               "barrier after (train loss)": ba["frankle"],
               "weight-matching sweeps": int(result.num_sweeps),
               "permutation groups": len(result.perm)},
              figs)

    self.step("align", "Permutation symmetry: weight matching",
              "B's hidden units are permuted (one permutation per residual stream) to maximise "
              "sum <W_A, P W_B> by coordinate descent with linear assignment (Ainsworth et al. "
              "2023); the function of B is unchanged, the barrier to A drops (partly for this "
              "narrow ResNet; to near zero for the wider MLPs of docs/reproductions.md).", run)

  # -- 5. Hessian -------------------------------------------------------------------------------
  def hessian(self):
    def run():
      params = self.var_a["params"]
      loss_fn = lj.make_loss_fn(self.model, mean=self.train_ds.mean, std=self.train_ds.std,
                                batch_stats=self.var_a.get("batch_stats"), train=False)
      data = self.train_ds.subset(slice(0, self.c.hessian_examples))
      batches = lj.make_batches(data.arrays, batch_size=256)
      mask = lj.trees.mask_by_ndim(params)
      k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      eig = lj.hessian_eigenvalues(loss_fn, params, batches, top_k=3,
                                   num_steps=self.c.lanczos_steps, key=k1, mask=mask)
      trace = lj.hessian_trace(k2, loss_fn, params, batches, num_probes=self.c.trace_probes,
                               mask=mask)
      sd = lj.spectral_density(k3, loss_fn, params, batches, num_probes=1,
                               num_steps=self.c.lanczos_steps, mask=mask)
      title = "Hessian spectral density at A (SLQ)"
      figs = self.figures(
        "spectrum", "Density of the Hessian's eigenvalues at A on a log scale, with the "
        "Lanczos nodes as ticks: a few large outliers above a bulk near zero.",
        plotting.plot_spectrum(sd.grid, sd.density, eigenvalues=sd.nodes, title=title),
        plotting.interactive_spectrum(sd.grid, sd.density, eigenvalues=sd.nodes, title=title))
      return ({"top eigenvalue": float(eig.top[0]), "2nd eigenvalue": float(eig.top[1]),
               "smallest eigenvalue": float(eig.smallest),
               "|min/max| ratio": abs(float(eig.smallest) / float(eig.top[0])),
               "trace": float(trace.mean), "trace std. error": float(trace.stderr)},
              figs)

    self.step("hessian", "Curvature at A: eigenvalues, trace, spectral density",
              "Lanczos with full reorthogonalisation on Hessian-vector products (forward over "
              "reverse), Hutchinson's trace with Rademacher probes, stochastic Lanczos quadrature "
              f"on the first {self.c.hessian_examples} training examples (weights, not biases or "
              "BatchNorm parameters, as Li et al.).", run)

  # -- 6. FGE -----------------------------------------------------------------------------------
  def fge(self):
    def run():
      loss_fn = lj.make_loss_fn(self.model, mean=self.train_ds.mean, std=self.train_ds.std,
                                batch_stats=self.bn_template, train=self.bn_template is not None)
      settings = lj.FGESettings(cycles=self.c.fge_cycles, cycle_epochs=self.c.fge_cycle_epochs,
                                lr1=self.c.fge_lr1, lr2=1e-3, batch_size=self.c.batch_size,
                                weight_decay=self.c.weight_decay, seed=0)
      members, _ = ensembles.fast_geometric_ensemble(
        loss_fn, self.var_a["params"], self.train_ds, settings=settings,
        workdir=self.path("fge_training"), progress=self.progress)
      stats = None
      if self.bn_template is not None:
        stats = ensembles.stack_members([
          lj.recompute_batch_stats(self.model, p, self.bn_template, self.train_ds,
                                   batch_size=128) for p in lj.trees.unstack(members)])
      res = ensembles.evaluate_ensemble(self.model, members, self.test_ds, batch_stats=stats)
      member_acc = np.asarray(res["member_accuracy"])
      member_loss = np.asarray(res["member_loss"])
      names = [f"member {i + 1}" for i in range(len(member_acc))] + ["ensemble"]
      values, title = [*member_loss, float(res["loss"])], "Fast Geometric Ensembling from A"
      figs = self.figures(
        "fge", "Test loss of each FGE snapshot and of their ensemble (orange).",
        plotting.plot_bars(names, values, ylabel="test loss (NLL)", highlight=["ensemble"],
                           title=title),
        plotting.interactive_bars(names, values, ylabel="test loss (NLL)",
                                  highlight=["ensemble"], title=title))
      return ({"mean member test loss": float(member_loss.mean()),
               "best member test loss": float(member_loss.min()),
               "ensemble test loss": float(res["loss"]),
               "best member test accuracy": float(member_acc.max()),
               "ensemble test accuracy": float(res["accuracy"]),
               "members": len(member_acc)},
              figs)

    self.step("fge", "Fast Geometric Ensembling",
              "A cyclic learning rate from A with a snapshot at each cycle's lowest rate; the "
              "ensemble averages the members' softmax probabilities (Garipov et al. 2018); its "
              "loss is at most the members' mean (Jensen). On this small problem the snapshots "
              "stay close, so it need not beat the best one (docs/reproductions.md has FGE "
              "against independent ensembles at equal budget).", run)

  # -- 7. PCA trajectory ------------------------------------------------------------------------
  def trajectory(self):
    def run():
      ckpt = self.path("model_a", "checkpoints")
      trajectory = checkpoints.load_trajectory(ckpt)
      final = trajectory[-1]
      pca = lj.pca_directions(trajectory, final, num_components=2,
                              mask=lj.trees.mask_by_ndim(final))
      lo, hi = pca.coords.min(0), pca.coords.max(0)
      span = np.maximum(hi - lo, 1e-6)
      xs = np.linspace(lo[0] - 0.2 * span[0], hi[0] + 0.2 * span[0], self.c.pca_points)
      ys = np.linspace(lo[1] - 0.2 * span[1], hi[1] + 0.2 * span[1], self.c.pca_points)
      res = lj.surface_grid(self.metric_fn(False, self.var_a.get("batch_stats")), final,
                            tuple(pca.directions), xs, ys, store=self.path("stores", "pca"),
                            engine=lj.EngineOptions(progress=self.progress))
      ev = pca.explained_variance_ratio
      title = "Training trajectory of A in its PCA plane"
      figs = self.figures(
        "trajectory", "A's per-epoch checkpoints projected onto the top two principal "
        "components of the trajectory, over the train loss of that plane.",
        plotting.plot_trajectory(xs, ys, res["train_loss"], pca.coords, explained_variance=ev,
                                 label="train loss", title=title),
        plotting.interactive_trajectory(xs, ys, res["train_loss"], pca.coords,
                                        explained_variance=ev, title=title))
      return ({"snapshots": len(trajectory), "1st PC explained variance": float(ev[0]),
               "2nd PC explained variance": float(ev[1])},
              figs)

    self.step("trajectory", "Optimisation trajectory in its PCA plane",
              "Principal components of t_i - t_final over A's per-epoch checkpoints (Gram matrix "
              "of the snapshots); the path drawn over the loss contours of that plane "
              "(Li et al. 2018, Sec. 7).", run)

  # -- 8. Sharp vs flat (experiments/_sharp_flat.py) ----------------------------------------------
  def sharp_flat(self):
    self.step("sharp_flat", "Sharp vs flat: batch size, sharpness and a rescaling",
              "MLPs trained with batch 32 and 1024 to the same train loss; worst-case l2 "
              "sharpness max L(w + delta) - L(w) over ||delta / c|| <= rho, standard (c = 1) and "
              "adaptive (c = |w|), before and after a per-unit ReLU rescaling that leaves each "
              "network's function unchanged: the standard measure moves, the adaptive one does "
              "not (docs/sharpness.md).",
              self._sharp_flat)

  def _sharp_flat(self):
    numbers, files = tour_step(self.train_ds, self.test_ds, tiny=self.c.tiny,
                               save_figure=lambda fig, name: plotting.save(fig, self.path(name)))
    caption = ("Worst-case l2 sharpness of the small- and large-batch MLPs, standard and "
               "adaptive, before and after a rescaling that leaves each network's function "
               "unchanged.")
    return numbers, [[f, caption] for f in files]

  def report(self):
    path = lj.write_report(self.path("report.html"), title="landscape-jax quickstart tour",
                           sections=self.sections, config=self.c.to_dict())
    print(f"Report: {path}")


def main(argv):
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  tour = Tour(_WORKDIR.value, get_config(_TINY.value), _PROGRESS.value)
  tour.train_models()
  for step in (tour.one_d, tour.two_d, tour.adaptive_2d, tour.curve, tour.align, tour.hessian,
               tour.fge, tour.trajectory, tour.sharp_flat):
    step()
  tour.report()
  print(f"Tour finished in {time.time() - start:.0f} s; open {tour.path('report.html')}")


if __name__ == "__main__":
  _common.run(main)
