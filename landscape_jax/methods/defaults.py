"""The fields of a training config and their defaults (`training.train` reads them).

A module of its own, with no JAX import, so that the experiment scripts' config files (and their
``--help``) read it at once.
"""

from typing import Any

__all__ = ["DEFAULTS"]

DEFAULTS: dict[str, Any] = {
  "seed": 0,
  "num_epochs": 10,
  "batch_size": 128,
  "optimizer": "sgd",
  "learning_rate": 0.1,
  "momentum": 0.9,
  "nesterov": False,
  "weight_decay": 0.0,
  "schedule": "constant",
  "lr_boundaries": (),       # epochs at which the step schedule multiplies the lr by lr_decay
  "lr_decay": 0.1,
  "warmup_epochs": 0,        # linear warm-up from 0 (cosine and step schedules)
  "augment": False,          # random crop (zero padding `augment_pad`) + horizontal flip
  "augment_pad": 4,
  "augment_flip": True,
  "checkpoint_every_epochs": 1,
  "eval_every_epochs": 1,
  "eval_batch_size": 1000,
  "log_every_steps": 50,
}
