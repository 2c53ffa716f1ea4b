"""Defaults of the experiment scripts, as locked `ml_collections.ConfigDict`s.

Each function returns every field its script reads, locked: a misspelt field, in a config file or
on the command line (``--config.learning_rat=0.1``), is refused by ml_collections itself, naming
the fields that exist. ``model_kwargs`` stays open (any keyword of the model). Config files beside
this one start from these and set what differs:

  from configs import defaults

  def get_config(arg=None):
    return defaults.train(model="resnet20", num_epochs=12)
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from landscape_jax.methods.defaults import DEFAULTS as TRAIN_DEFAULTS


def _locked(c: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  c.lock()
  if "model_kwargs" in c:
    c.model_kwargs.unlock()
  for k, v in overrides.items():
    setattr(c, k, v)  # a locked ConfigDict refuses unknown names (AttributeError)
  return c


def train(**overrides) -> ml_collections.ConfigDict:
  """experiments/train.py: the fields of `landscape_jax.methods.training.DEFAULTS`, plus
  ``dataset`` ("digits"), ``data_dir`` (None: the TFDS default), ``train_subset`` (None: all),
  ``model`` ("mlp") and ``model_kwargs`` (keywords of `get_model`)."""
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.train_subset = config_dict.placeholder(int)
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  for k, v in TRAIN_DEFAULTS.items():
    c[k] = v
  return _locked(c, overrides)


def surface(**overrides) -> ml_collections.ConfigDict:
  """experiments/surface.py (Li et al. 2018 defaults).

  ``mode`` ("random" | "interpolation" | "plane"), ``runs`` (training workdirs, or
  ``"init:<model>"``), ``labels``, ``step`` (None: latest checkpoint), ``dataset`` (for ``init:``
  runs), ``data_dir``, ``dim`` (1 or 2), ``x`` / ``y`` ((min, max, num); Li et al.: 51 points on
  [-1, 1]), ``norm`` ("filter"), ``ignore`` ("biasbn"), ``seed``, ``same_direction``,
  ``orthogonal``, ``bn`` ("center": the centre's statistics as Li et al.; "recompute": per point
  on the training split), ``splits`` (("train", "test")), ``eval_subset`` (None: whole splits),
  ``eval_batch_size`` (None: the fastest of 32-512 measured by `choose_batch_size`),
  ``chunk_size`` (None: from device memory), ``map_mode`` (None: per platform), ``error_tol``
  (None: exact metrics; a number: `make_error_controlled_metric_fn` with that standard error;
  not with ``bn="recompute"``), ``error_rtol`` (0: the standard error target is ``error_tol``;
  else ``error_tol + error_rtol * |loss|``), ``error_anchor_stride`` (4: anchored control
  variates on every 4th grid line; 0: plain estimates).
  """
  c = ml_collections.ConfigDict()
  c.mode = "random"
  c.runs = ("init:mlp",)
  c.labels = config_dict.placeholder(tuple)
  c.step = config_dict.placeholder(int)
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.dim = 2
  c.x = (-1.0, 1.0, 51)
  c.y = (-1.0, 1.0, 51)
  c.norm = "filter"
  c.ignore = "biasbn"
  c.seed = 0
  c.same_direction = False
  c.orthogonal = False
  c.bn = "center"
  c.splits = ("train", "test")
  c.eval_subset = config_dict.placeholder(int)
  c.eval_batch_size = config_dict.placeholder(int)
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  c.error_tol = config_dict.placeholder(float)
  c.error_rtol = 0.0
  c.error_anchor_stride = 4
  return _locked(c, overrides)


def connect(**overrides) -> ml_collections.ConfigDict:
  """experiments/connect.py (small digits defaults of Garipov et al. 2018's curve finding).

  ``dataset``, ``data_dir``, ``model``, ``model_kwargs``; the endpoints: ``endpoints`` (two
  experiments/train.py workdirs as ``"a,b"``; empty: train two here), ``endpoint_seeds``,
  ``endpoint_epochs``, ``endpoint_learning_rate``; the curve (SGD momentum 0.9, L2 on phi(t), the
  reference's learning-rate schedule): ``num_bends``, ``kind`` ("bezier" | "polychain"),
  ``epochs``, ``learning_rate``, ``momentum``, ``weight_decay``, ``batch_size``, ``num_ts`` (ts
  per minibatch), ``augment`` (crop + flip), ``seed``, ``checkpoint_every``; the evaluation:
  ``num_points`` (61 in the paper), ``chunk_size``, ``eval_batch_size``, ``bn_batch_size``, and
  the plane through the endpoints and the bend: ``plane_points`` per side over [``plane_min``,
  ``plane_max``], ``plane_metrics``.
  """
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.model = "mlp"
  c.model_kwargs = {"features": (32,)}
  c.endpoints = ""
  c.endpoint_seeds = (1, 2)
  c.endpoint_epochs = 30
  c.endpoint_learning_rate = 0.05
  c.num_bends = 3
  c.kind = "bezier"
  c.epochs = 30
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.batch_size = 64
  c.num_ts = 1
  c.augment = False
  c.seed = 0
  c.checkpoint_every = 10
  c.num_points = 61
  c.chunk_size = 8
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  c.plane_points = 21
  c.plane_min = -0.2
  c.plane_max = 1.2
  c.plane_metrics = ("train_loss", "test_loss")
  return _locked(c, overrides)


def fge(**overrides) -> ml_collections.ConfigDict:
  """experiments/fge.py (small digits defaults of Fast Geometric Ensembling).

  ``dataset``, ``data_dir``, ``model``, ``model_kwargs``; ``start`` (an experiments/train.py
  workdir to start FGE from; empty: train the first model here); ``budget_epochs`` (one training
  budget), ``learning_rate``, ``weight_decay``, ``batch_size``, ``augment`` (crop + flip),
  ``seeds`` and ``num_independent`` (the independently trained ensemble compared at equal
  budget); FGE (Garipov et al. 2018): ``cycles`` of ``cycle_epochs`` epochs with the cyclic rate
  between ``lr1`` and ``lr2``; ``eval_batch_size``, ``bn_batch_size``.
  """
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.model = "mlp"
  c.model_kwargs = {"features": (32,)}
  c.start = ""
  c.budget_epochs = 20
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.batch_size = 64
  c.augment = False
  c.seeds = (0, 1, 2, 3)
  c.num_independent = 3
  c.cycles = 6
  c.cycle_epochs = 4
  c.lr1 = 0.2
  c.lr2 = 1e-3
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  return _locked(c, overrides)


def charlm(**overrides) -> ml_collections.ConfigDict:
  """experiments/charlm.py (a tiny character-level transformer on a bundled text).

  ``text`` (a name of `lj.text.TEXTS`), ``context`` (characters per window), ``stride`` (between
  training windows), ``test_fraction`` (the end of the text held out); the model: ``width``,
  ``depth``, ``heads``; Adam: ``steps``, ``batch_size``, ``learning_rate``, ``seeds`` (two
  trainings: the surface is centred on the first, the interpolation joins both); the surface
  (Li et al. 2018): ``x`` / ``y`` ((min, max, num)), ``norm`` ("filter"), ``ignore``
  ("biasbn"), ``direction_seed``; ``alphas`` ((min, max, num)) of the interpolation; the
  Hessian of the first model over the training split: ``hessian_batch_size``, ``top_k`` and
  ``num_steps`` (Lanczos), ``density_probes`` and ``density_steps`` (stochastic Lanczos
  quadrature); ``eval_batch_size``, ``chunk_size`` and ``map_mode`` (None: the engine's).
  """
  c = ml_collections.ConfigDict()
  c.text = "valley"
  c.context = 32
  c.stride = 4
  c.test_fraction = 0.1
  c.width = 32
  c.depth = 2
  c.heads = 4
  c.steps = 400
  c.batch_size = 32
  c.learning_rate = 3e-3
  c.seeds = (0, 1)
  c.x = (-1.0, 1.0, 11)
  c.y = (-1.0, 1.0, 11)
  c.norm = "filter"
  c.ignore = "biasbn"
  c.direction_seed = 0
  c.alphas = (-0.5, 1.5, 21)
  c.hessian_batch_size = 256
  c.top_k = 3
  c.num_steps = 40
  c.density_probes = 2
  c.density_steps = 40
  c.eval_batch_size = 256
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  return _locked(c, overrides)


def scale_gpt2(**overrides) -> ml_collections.ConfigDict:
  """experiments/scale_gpt2.py (a GPT-2-shaped language model with sharded parameters).

  The mesh: ``points``, ``data``, ``model_axis`` (role sizes of `lj.make_mesh`; their product is
  the device count); the model (`models.gpt.GPT`): ``model`` ("gpt_tiny" or "gpt2_small"),
  ``vocab_size`` (None: the text's characters; 50257 for GPT-2's shape), ``context``, ``width``,
  ``depth``, ``heads``; the text (``text``, ``stride``, ``test_fraction``, ``train_windows`` /
  ``test_windows``: the first windows kept); Adam: ``steps``, ``batch_size``, ``learning_rate``,
  ``seeds`` (two trainings); the surface (Li et al. 2018): ``x`` / ``y`` ((min, max, num)),
  ``norm``, ``ignore``, ``direction_seed``; ``alphas`` of the interpolation; the Hessian of the
  first model: ``hessian_batch_size``, ``top_k``, ``num_steps``; ``eval_batch_size``,
  ``chunk_size`` (None: the engine's).
  """
  c = ml_collections.ConfigDict()
  c.points = 1
  c.data = 2
  c.model_axis = 4
  c.model = "gpt_tiny"
  c.vocab_size = config_dict.placeholder(int)
  c.context = 32
  c.width = 128
  c.depth = 4
  c.heads = 4
  c.text = "valley"
  c.stride = 16
  c.test_fraction = 0.1
  c.train_windows = 256
  c.test_windows = 64
  c.steps = 100
  c.batch_size = 32
  c.learning_rate = 1e-3
  c.seeds = (0, 1)
  c.x = (-1.0, 1.0, 5)
  c.y = (-1.0, 1.0, 5)
  c.norm = "filter"
  c.ignore = "biasbn"
  c.direction_seed = 0
  c.alphas = (0.0, 1.0, 5)
  c.hessian_batch_size = 64
  c.top_k = 2
  c.num_steps = 10
  c.eval_batch_size = 64
  c.chunk_size = config_dict.placeholder(int)
  return _locked(c, overrides)
