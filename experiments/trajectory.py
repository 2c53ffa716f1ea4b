r"""Optimisation trajectory in its PCA plane over the loss contours (Li et al. 2018, Sec. 7).

  # digits, end to end: train an MLP with a checkpoint every epoch, then PCA, surface and plot
  python experiments/trajectory.py --config=experiments/configs/trajectory_digits.py \
      --workdir=runs/traj
  # an existing run of experiments/train.py with checkpoint_every_epochs=1
  python experiments/trajectory.py --config=experiments/configs/trajectory_cifar10.py \
      --config.run=runs/cifar10_vgg9 --workdir=runs/cifar10_vgg9_trajectory

Steps: (1) train with snapshots (`training.train` keeps a checkpoint per
``checkpoint_every_epochs``; skipped when ``config.run`` names a finished run), (2)
`checkpoints.load_trajectory` and `pca_directions` (top-2 principal components of
``t_i - t_final``, unit norm, explained-variance ratios), (3) the loss over that plane around
``t_final`` with `surface_grid` (chunked, sharded, resumable), on a grid that covers the projected
path, (4) `plotting.plot_trajectory` with axes "1st PC: xx.xx %". Writes ``pca.npz``,
``surface/store``, ``summary.json`` and ``trajectory.png/pdf``.
"""

import json
import os

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Trajectory config file (.py).")
flags.FLAGS.set_default("verbosity", logging.WARNING)
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np

import landscape_jax as lj
from landscape_jax.methods import checkpoints


def _axis(lo, hi, margin, num):
  span = max(hi - lo, 1e-8)
  return np.linspace(lo - margin * span, hi + margin * span, int(num))


def main(argv):
  lj.sharding.initialize_distributed()
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  # (1) train with a snapshot every `checkpoint_every_epochs` epochs (unless config.run is given)
  model, final_vars, train_ds, tc, run = _common.load_or_train(config, workdir,
                                                               progress=_PROGRESS.value)
  data_dir = config.get("data_dir") or tc.get("data_dir")

  # (2) PCA of the saved snapshots.
  ckpt_dir = os.path.join(run, "checkpoints")
  steps = checkpoints.list_steps(ckpt_dir)
  trajectory = checkpoints.load_trajectory(ckpt_dir, steps=steps)
  final = trajectory[-1]
  mask = lj.trees.mask_by_ndim(final) if config.ignore == "biasbn" else None
  pca = lj.pca_directions(trajectory, final, num_components=2, mask=mask)
  ev = pca.explained_variance_ratio
  print(f"{len(trajectory)} snapshots (steps {steps[0]}..{steps[-1]}); explained variance "
        f"1st PC {100 * ev[0]:.2f} %, 2nd PC {100 * ev[1]:.2f} %")

  # (3) Loss surface over the PCA plane around the final point, covering the path.
  xs = _axis(pca.coords[:, 0].min(), pca.coords[:, 0].max(), config.margin, config.num_points)
  ys = _axis(pca.coords[:, 1].min(), pca.coords[:, 1].max(), config.margin, config.num_points)
  splits = {s: _common.load(tc["dataset"], s, data_dir=data_dir) for s in config.splits}
  if config.get("eval_subset"):
    splits = {k: v.subset(slice(0, config.eval_subset)) for k, v in splits.items()}
  metric_fn = lj.make_metric_fn(model, splits, batch_stats=final_vars.get("batch_stats"),
                                batch_size=config.eval_batch_size)
  meta = {"run": run, "steps": steps, "ignore": config.ignore, "splits": list(config.splits),
          "eval_subset": config.get("eval_subset"),
          "explained_variance_ratio": [float(r) for r in ev]}
  res = lj.surface_grid(metric_fn, final, tuple(pca.directions), xs, ys,
                        engine=lj.EngineOptions(mesh=lj.make_mesh(),
                                                chunk_size=config.get("chunk_size"),
                                                map_mode=config.get("map_mode"),
                                                progress=_PROGRESS.value),
                        store=os.path.join(workdir, "surface", "store"), metadata=meta)

  # (4) Path over the contours.
  if lj.is_main_process():
    np.savez(os.path.join(workdir, "pca.npz"), coords=pca.coords, steps=np.asarray(steps),
             explained_variance_ratio=ev, singular_values=pca.singular_values, xs=xs, ys=ys,
             **res)
    key = f"{config.splits[0]}_loss"
    _common.plot("plot_trajectory", os.path.join(workdir, "trajectory"), xs, ys, res[key],
                 pca.coords, explained_variance=ev, label=key,
                 log=bool(config.get("log_contours")),
                 title=f"{tc['model']} on {tc['dataset']}: PCA of the trajectory")
    summary = {"run": run, "num_snapshots": len(trajectory), "steps": steps,
               "explained_variance_ratio": [float(r) for r in ev],
               "path_start": pca.coords[0].tolist(), "path_end": pca.coords[-1].tolist(),
               "at_final": {k: float(v) for k, v in
                            jax.jit(lambda f, p: f(p))(metric_fn, final).items()},
               "loss_range": [float(np.nanmin(res[key])), float(np.nanmax(res[key]))]}
    _common.write_summary(workdir, summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  _common.run(main)
