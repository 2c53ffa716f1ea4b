r"""A GPT-2-shaped language model with its parameters sharded over a mesh: two short trainings,
a filter-normalised 2-D surface, the interpolation between the trainings and the top Hessian
eigenvalues, on the text that ships with the package.

  python experiments/scale_gpt2.py --config=experiments/configs/scale_gpt2.py --workdir=runs/g
  python experiments/scale_gpt2.py --config=experiments/configs/scale_gpt2.py:gpt2 --workdir=...

On a CPU the script simulates 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
unless XLA_FLAGS already gives a count); on a TPU or GPU host it uses the real ones. The mesh
(``config.points`` x ``config.data`` x ``config.model_axis``, default 1 x 2 x 4) plays the roles
of `lj.make_mesh`: every parameter, direction, Adam moment and Lanczos vector is sharded over the
model axis (the GPT's `nn.with_partitioning` metadata, `lj.partitioned_params`), every batch and
evaluation split over the data axis; nothing is gathered on one device. Writes
``summary.json`` (with each array's per-device bytes) and ``landscape.npz``; the surface and the
interpolation are resumable stores (rerun the same command).
"""

import functools
import json
import os
import sys

if __name__ == "__main__" and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("scale_gpt2 config file (.py).")
flags.FLAGS.set_default("verbosity", logging.WARNING)
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import landscape_jax as lj


def _grid(spec):
  lo, hi, n = spec
  return np.linspace(float(lo), float(hi), int(n))


def per_device_bytes(tree) -> int:
  """Bytes of `tree` held by the first device (its shards only)."""
  dev = jax.local_devices()[0]
  return int(sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
                 if s.device == dev))


def train(loss_fn, params, data, mesh, *, steps, batch_size, learning_rate, seed):
  """Adam on random minibatches; parameters and moments keep their sharding (jit with
  out_shardings), every batch is spread over the data axis."""
  opt = optax.adam(learning_rate)
  # moments: zeros like the parameters, sharded like them; the step count replicated
  state = lj.sharding.place(opt.init(params), mesh)
  shardings = jax.tree.map(lambda x: x.sharding, (params, state))
  batch_sharding = NamedSharding(mesh, P("data" if "data" in mesh.axis_names else None))

  @functools.partial(jax.jit, out_shardings=(*shardings, None))
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  inputs, targets = data
  rng = np.random.default_rng(seed)
  b = min(batch_size, inputs.shape[0])
  loss = None
  for _ in range(steps):
    idx = rng.choice(inputs.shape[0], b, replace=False)
    batch = jax.device_put((inputs[idx], targets[idx]), batch_sharding)
    params, state, loss = step(params, state, batch)
  return params, float(loss), per_device_bytes(state)


def main(argv):
  _common.check_argv(argv)
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  sizes = {"points": config.points, "data": config.data, "model": config.model_axis}
  mesh = lj.make_mesh(**sizes)
  splits, vocabulary = lj.char_splits(lj.load_text(config.text), context=config.context,
                                      stride=config.stride, test_fraction=config.test_fraction)
  keep = {"train": config.train_windows, "test": config.test_windows}
  splits = {k: tuple(a[:keep[k]] for a in v) for k, v in splits.items()}
  vocab = config.vocab_size or len(vocabulary)
  model = lj.get_model(config.model, num_classes=vocab, context=config.context,
                       width=config.width, depth=config.depth, heads=config.heads)
  loss_fn = lj.make_loss_fn(model, loss=lj.TOKEN_CROSS_ENTROPY)
  metric_fn = lj.make_metric_fn(model, splits, loss=lj.TOKEN_CROSS_ENTROPY,
                                batch_size=config.eval_batch_size, mesh=mesh)
  runs, train_info = [], []
  for seed in config.seeds:
    boxed = model.init(jax.random.key(seed), splits["train"][0][:1])["params"]
    params = lj.partitioned_params(boxed, mesh)
    params, loss, opt_bytes = train(loss_fn, params, splits["train"], mesh, steps=config.steps,
                                    batch_size=config.batch_size,
                                    learning_rate=config.learning_rate, seed=seed)
    runs.append(params)
    train_info.append({"seed": seed, "final_batch_loss": loss, "adam_bytes_per_device": opt_bytes})
  a, b = runs[:2]
  engine = lj.EngineOptions(mesh=mesh, chunk_size=config.get("chunk_size") or config.points,
                            progress=_PROGRESS.value)
  num_params = lj.trees.num_params(a)
  summary = {"config": json.loads(config.to_json_best_effort()), "mesh": sizes,
             "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
             "vocabulary_size": vocab, "num_params": num_params,
             "param_bytes_total": 4 * num_params,
             "param_bytes_per_device": per_device_bytes(a), "training": train_info,
             "models": [{k: float(v) for k, v in metric_fn(p).items()} for p in runs]}
  print(f"{num_params} parameters on {summary['devices']} (mesh {sizes}); per device "
        f"{summary['param_bytes_per_device']} of {summary['param_bytes_total']} bytes")

  xs, ys = _grid(config.x), _grid(config.y)
  dirs = lj.random_directions(jax.random.key(config.direction_seed), a, num=2,
                              norm=config.norm or None, ignore=config.ignore or None)
  summary["direction_bytes_per_device"] = per_device_bytes(dirs)
  surface = lj.surface_grid(metric_fn, a, dirs, xs, ys, store=os.path.join(workdir, "surface"),
                            metadata={"direction_seed": config.direction_seed,
                                      "norm": config.norm, "ignore": config.ignore}, engine=engine)
  alphas = _grid(config.alphas)
  path = lj.linear_path(metric_fn, a, b, alphas, store=os.path.join(workdir, "interpolation"),
                        engine=engine)
  summary["surface"] = {k: {"min": float(np.min(v)), "max": float(np.max(v))}
                        for k, v in surface.items()}
  summary["interpolation"] = {k: lj.barriers(v, alphas) for k, v in path.items() if "loss" in k}

  batches = lj.make_batches(splits["train"], batch_size=config.hessian_batch_size,
                            sharding=NamedSharding(mesh, P(None, "data")))
  eig = lj.hessian_eigenvalues(loss_fn, a, batches, top_k=config.top_k,
                               num_steps=config.num_steps,
                               key=jax.random.key(config.direction_seed))
  summary["hessian"] = {"top_eigenvalues": eig.top.tolist(), "smallest_eigenvalue": eig.smallest}
  np.savez(os.path.join(workdir, "landscape.npz"), xs=xs, ys=ys, alphas=alphas,
           **{f"surface_{k}": v for k, v in surface.items()},
           **{f"interpolation_{k}": v for k, v in path.items()})
  _common.write_summary(workdir, summary)
  print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))


if __name__ == "__main__":
  _common.run(main)
