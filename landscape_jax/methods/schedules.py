"""Optimisers and learning-rate schedules (optax) of the recipes this library reproduces.

* Li et al. 2018: SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at epochs 150, 225, 275 of
  300, batch 128, weight decay 5e-4 (`step_schedule`).
* Garipov et al. 2018: SGD momentum 0.9; lr factor 1 until 50 % of training, then linear down to
  0.01 at 90 %, then 0.01, set once per epoch (`garipov_schedule`, `curve_lr_schedule`).

Weight decay is an L2 term added to the gradient before momentum, as PyTorch's SGD does:
``g <- g + wd * w; m <- mu * m + g; w <- w - lr * (g + mu * m)`` (Nesterov) or ``w - lr * m``.

References:
  Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity, and
  Fast Ensembling of DNNs".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "cosine_schedule",
  "curve_lr_schedule",
  "cyclic_lr",
  "cyclic_schedule",
  "garipov_schedule",
  "make_optimizer",
  "OPTIMIZERS",
  "SCHEDULES",
  "step_schedule",
  "with_warmup",
]

PyTree = Any
log = logging.getLogger(__name__)

SCHEDULES = ("constant", "step", "cosine", "garipov")
OPTIMIZERS = ("sgd", "adam")


def step_schedule(base_lr: float, *, boundaries: Sequence[int], factor: float = 0.1,
                  warmup_steps: int = 0) -> optax.Schedule:
  """Piecewise-constant lr: ``base_lr * factor ** (number of boundaries <= step)``.

  Li et al. 2018 use base_lr 0.1, factor 0.1 and boundaries at epochs 150, 225, 275 (pass them in
  steps: ``epoch * steps_per_epoch``). With `warmup_steps`, the lr first rises linearly from 0.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  boundaries = sorted(int(b) for b in boundaries)
  sched = optax.piecewise_constant_schedule(base_lr, {b: factor for b in boundaries if b > 0})
  return with_warmup(sched, base_lr, warmup_steps)


def cosine_schedule(base_lr: float, total_steps: int, *, warmup_steps: int = 0,
                    final_factor: float = 0.0) -> optax.Schedule:
  """``base_lr * (f + (1 - f) (1 + cos(pi t / T)) / 2)`` after an optional linear warm-up."""
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, max(total_steps, 1),
                                              end_value=final_factor * base_lr)
  return optax.cosine_decay_schedule(base_lr, max(total_steps, 1), alpha=final_factor)


def garipov_schedule(base_lr: float, total_steps: int, *,
                     steps_per_epoch: int | None = None) -> optax.Schedule:
  """Garipov et al. 2018 schedule: ``base_lr * factor(a)`` with a the fraction of training done.

  factor(a) = 1 for a <= 0.5; 1 - 0.99 (a - 0.5) / 0.4 for 0.5 < a <= 0.9; 0.01 after.
  With `steps_per_epoch` the lr is set once per epoch exactly as the reference code
  (``learning_rate_schedule(base_lr, epoch, total)`` of timgaripov/dnn-mode-connectivity's
  train.py, called at the start of epochs ``1..total``): ``a = (e + 1) / num_epochs`` for the
  0-based epoch ``e = step // steps_per_epoch``, so the first epoch already has
  ``a = 1 / num_epochs`` and the last one ``a = 1``. Otherwise ``a = step / total_steps``.
  This is the one implementation; `core.curves.curve_lr_schedule` (curve training and
  the FGE budget runs) uses it.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  if total_steps <= 0:
    raise ValueError(f"garipov_schedule needs total_steps > 0, got {total_steps}.")
  if steps_per_epoch is not None and steps_per_epoch <= 0:
    raise ValueError(f"garipov_schedule needs steps_per_epoch > 0 (or None), got "
                     f"{steps_per_epoch}.")

  def schedule(step):
    step = jnp.asarray(step)
    if steps_per_epoch:
      # integer epoch index (float division could round step / spe up near an epoch's end)
      epoch = (step // steps_per_epoch if jnp.issubdtype(step.dtype, jnp.integer)
               else jnp.floor(step / steps_per_epoch))
      alpha = ((epoch + 1).astype(jnp.float32) * steps_per_epoch) / total_steps
    else:
      alpha = step.astype(jnp.float32) / total_steps
    factor = jnp.where(alpha <= 0.5, 1.0,
                       jnp.where(alpha <= 0.9, 1.0 - (alpha - 0.5) / 0.4 * 0.99, 0.01))
    return base_lr * factor

  return schedule


def with_warmup(schedule, base_lr, warmup_steps):
  if not warmup_steps:
    return schedule
  warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warm, lambda s: schedule(s + warmup_steps)], [warmup_steps])


def make_optimizer(*, learning_rate: float | optax.Schedule, momentum: float | None = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0,
                   name: str = "sgd") -> optax.GradientTransformation:
  """SGD (optionally Nesterov) or Adam with weight decay as an L2 gradient term.

  ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov))``, i.e. the
  update of PyTorch's ``torch.optim.SGD(weight_decay=wd)`` used by Li et al. and Garipov et al.;
  weight decay applies to every parameter (biases and BatchNorm too, as in both references).
  ``name="adam"`` uses ``optax.adam`` after the same L2 term (momentum/nesterov ignored).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer '{name}'. Known: {', '.join(OPTIMIZERS)}.")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  if name == "adam":
    opt = optax.adam(learning_rate)
  else:
    opt = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), opt)
  return opt



def curve_lr_schedule(base_lr: float, *, total_epochs: int, steps_per_epoch: int,
                      ) -> optax.Schedule:
  """Reference learning-rate schedule of Garipov et al. (constant within an epoch).

  ``training.garipov_schedule(base_lr, total_epochs * steps_per_epoch, steps_per_epoch=...)``:
  with ``a = (e + 1) / total_epochs`` for the 0-based epoch e (the reference's train.py counts
  epochs from 1 and uses ``a = epoch / total``), factor 1 for ``a <= 0.5``,
  ``1 - 0.99 (a - 0.5) / 0.4`` for ``0.5 < a <= 0.9`` (linear down to 0.01), and 0.01
  afterwards; lr = base_lr * factor.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  if total_epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"total_epochs and steps_per_epoch must be positive, got {total_epochs} "
                     f"and {steps_per_epoch}.")
  return garipov_schedule(base_lr, total_epochs * steps_per_epoch,
                          steps_per_epoch=steps_per_epoch)


def cyclic_lr(step, *, lr1: float = 0.05, lr2: float = 1e-4, cycle_epochs: int = 4,
              steps_per_epoch: int) -> jax.Array:
  """The FGE learning rate at global iteration `step` (formula in the module docstring).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  step = jnp.asarray(step)
  epoch = step // steps_per_epoch
  i = step % steps_per_epoch
  s = ((epoch % cycle_epochs).astype(jnp.float32) + i.astype(jnp.float32) / steps_per_epoch) \
    / cycle_epochs
  down = lr1 * (1.0 - 2.0 * s) + lr2 * 2.0 * s
  up = lr1 * (2.0 * s - 1.0) + lr2 * (2.0 - 2.0 * s)
  return jnp.where(s < 0.5, down, up)


def cyclic_schedule(*, lr1: float = 0.05, lr2: float = 1e-4, cycle_epochs: int = 4,
                    steps_per_epoch: int) -> optax.Schedule:
  """The FGE cyclic learning rate as an Optax schedule (Garipov et al. 2018, Section 4).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  if cycle_epochs < 2 or cycle_epochs % 2:
    raise ValueError(f"cycle_epochs must be even and >= 2 (the snapshot is taken at mid-cycle), "
                     f"got {cycle_epochs}.")
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
  return functools.partial(cyclic_lr, lr1=lr1, lr2=lr2, cycle_epochs=cycle_epochs,
                           steps_per_epoch=steps_per_epoch)
