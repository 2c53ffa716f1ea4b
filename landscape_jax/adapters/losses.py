"""Per-example losses and their metrics, for any outputs and targets.

A `Loss` tells the metric and loss builders (`evaluation.make_metric_fn`, `make_loss_fn`,
`batchnorm.make_recompute_metric_fn`, `methods.ensembles.evaluate_ensemble`) how to score a model's
outputs against the targets of a batch. Every metric is an exact ratio of sums over a split:

    metric = sum_i m_i v_i / sum_i m_i w_i,

with ``v_i`` the example's value of the metric (``sums(outputs, targets)[0][name]``), ``w_i`` its
weight (``sums(...)[1]``; 1 when the loss is not `weighted`) and ``m_i`` the padding mask of the
split. So a split of any size gives the same number as one pass over all of it. The minibatch
objective of `make_loss_fn` is the same ratio over the batch.

Provided:

* `CROSS_ENTROPY` (the default): outputs ``(b, C)`` logits, targets ``(b,)`` integer classes;
  ``loss`` = mean ``-log softmax(logits)[y]``, ``accuracy`` = fraction with ``argmax = y``.
* `TOKEN_CROSS_ENTROPY`: sequence models. Outputs ``(b, T, V)`` logits, targets ``(b, T)``
  integer tokens, or a pair ``(tokens, mask)`` with a ``(b, T)`` mask (1 = scored, 0 = ignored,
  e.g. padding). ``v_i = sum_t mask_it CE_it``, ``w_i = sum_t mask_it``: ``loss`` is the mean
  cross-entropy over all scored tokens of the split (``exp(loss)`` is the perplexity), and
  ``accuracy`` the fraction of scored tokens predicted exactly (next-token accuracy).
* `NORMALIZED_CROSS_ENTROPY`: `CROSS_ENTROPY` of the normalised logits
  ``z = (f - mean_k f_k) / max(||f - mean_k f_k||_2, 1e-10)`` (Andriushchenko et al. 2023's
  logit normalisation for sharpness: the loss no longer depends on the scale of the logits, so
  a sharpness measure does not move when the last layer is scaled). The accuracy is unchanged.
* `MSE`: regression. Outputs and targets of the same shape ``(b, ...)``; ``loss`` = mean squared
  error over all output elements of the split. No accuracy: there is none for regression.

Your own: ``Loss(sums=fn, metrics=("loss", ...), weighted=..., ensemble=..., classes=...)`` with
module-level functions (they are part of the compiled program's static key and of the identity
of a stored result).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "CROSS_ENTROPY",
  "check_loss",
  "Loss",
  "MSE",
  "normalize_logits",
  "NORMALIZED_CROSS_ENTROPY",
  "TOKEN_CROSS_ENTROPY",
]

PyTree = Any
Sums = tuple[dict[str, jax.Array], jax.Array | None]


class Loss(NamedTuple):
  """A per-example loss and its metrics (see the module docstring for the formulas).

  Attributes:
    sums: ``sums(outputs, targets) -> (values, weights)``: ``values`` maps every name of
      `metrics` to a ``(b,)`` array of per-example values ``v_i``; ``weights`` is the ``(b,)``
      array ``w_i`` when `weighted`, else None (every example weighs 1).
    metrics: the metric names, ``"loss"`` first (the objective of `make_loss_fn`).
    weighted: whether examples carry weights (e.g. their number of scored tokens).
    ensemble: ``ensemble(outputs) -> combined``: for outputs stacked over K members on a leading
      axis, the outputs of the ensembles of the first k members, k = 1..K (same shape), in the
      form `sums` accepts; None if the loss has no ensemble (`evaluate_ensemble` refuses it).
    classes: ``classes(targets) -> integer array`` of the class indices the targets select from
      the last axis of the outputs (checked against the number of outputs, so that a model with
      too few logits is refused instead of giving a NaN); None for targets that are not classes.
  """

  sums: Callable[[PyTree, PyTree], Sums]
  metrics: tuple[str, ...]
  weighted: bool = False
  ensemble: Callable[[PyTree], PyTree] | None = None
  classes: Callable[[PyTree], Any] | None = None


def check_loss(loss: Any) -> Loss:
  """`loss`, or `CROSS_ENTROPY` for None; a ValueError naming `loss` for anything else."""
  if loss is None:
    return CROSS_ENTROPY
  if not isinstance(loss, Loss) or not loss.metrics or loss.metrics[0] != "loss":
    raise ValueError(
      f"loss must be a landscape_jax Loss whose first metric is 'loss' (CROSS_ENTROPY, "
      f"TOKEN_CROSS_ENTROPY, MSE or your own Loss(...)), got {loss!r}.")
  return loss


def _log_mean_prob(logits: jax.Array) -> jax.Array:
  """``log (1/k) sum_{j<=k} softmax(logits_j)`` for k = 1..K over the leading (member) axis."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  k = jnp.arange(1, logits.shape[0] + 1, dtype=jnp.float32).reshape(
    (-1,) + (1,) * (logits.ndim - 1))
  return jax.lax.associative_scan(jnp.logaddexp, logp, axis=0) - jnp.log(k)


def _cumulative_mean(outputs: jax.Array) -> jax.Array:
  k = jnp.arange(1, outputs.shape[0] + 1, dtype=jnp.float32).reshape(
    (-1,) + (1,) * (outputs.ndim - 1))
  return jnp.cumsum(outputs.astype(jnp.float32), 0) / k


def _class_sums(logits: jax.Array, labels: jax.Array) -> Sums:
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
      f"CROSS_ENTROPY needs (batch, classes) logits and (batch,) integer labels; got outputs "
      f"{logits.shape} and targets {labels.shape}. For sequence outputs (batch, length, "
      "vocabulary) with (batch, length) targets use loss=TOKEN_CROSS_ENTROPY; for regression "
      "loss=MSE.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"CROSS_ENTROPY needs integer class labels, got {labels.dtype}; for real "
                     "targets use loss=MSE.")
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": ce, "accuracy": hit}, None


def normalize_logits(logits: jax.Array) -> jax.Array:
  """``(f - mean f) / max(||f - mean f||_2, 1e-10)`` over the last (class) axis.

  References:
    Andriushchenko, Croce, Mueller, Hein and Flammarion 2023, "A Modern Look at the Relationship
    between Sharpness and Generalization" (logit normalisation).
  """
  f = logits.astype(jnp.float32)
  f = f - jnp.mean(f, -1, keepdims=True)
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-10)


def _normalized_class_sums(logits: jax.Array, labels: jax.Array) -> Sums:
  values, weights = _class_sums(logits, labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(normalize_logits(logits), labels)
  return {**values, "loss": ce}, weights


def _tokens_and_mask(targets):
  if isinstance(targets, tuple | list):
    if len(targets) != 2:
      raise ValueError("TOKEN_CROSS_ENTROPY targets are (batch, length) tokens or a pair "
                       f"(tokens, mask); got a sequence of {len(targets)} arrays.")
    tokens, mask = targets
    return tokens, mask
  return targets, None


def _token_classes(targets):
  return _tokens_and_mask(targets)[0]


def _token_sums(logits: jax.Array, targets) -> Sums:
  tokens, mask = _tokens_and_mask(targets)
  if logits.ndim != tokens.ndim + 1 or logits.shape[:-1] != tokens.shape or tokens.ndim < 2:
    raise ValueError(
      f"TOKEN_CROSS_ENTROPY needs (batch, length, vocabulary) logits and (batch, length) "
      f"integer tokens; got outputs {logits.shape} and targets {tokens.shape}.")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"TOKEN_CROSS_ENTROPY needs integer tokens, got {tokens.dtype}.")
  if mask is None:
    mask = jnp.ones(tokens.shape, jnp.float32)
  elif mask.shape != tokens.shape:
    raise ValueError(f"The TOKEN_CROSS_ENTROPY mask has shape {mask.shape}, the tokens "
                     f"{tokens.shape}; they must match.")
  mask = mask.astype(jnp.float32)
  axes = tuple(range(1, tokens.ndim))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens)
  hit = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
  return ({"loss": jnp.sum(ce * mask, axes), "accuracy": jnp.sum(hit * mask, axes)},
          jnp.sum(mask, axes))


def _mse_sums(outputs: jax.Array, targets: jax.Array) -> Sums:
  if outputs.shape != targets.shape:
    raise ValueError(f"MSE needs outputs and targets of the same shape; got outputs "
                     f"{outputs.shape} and targets {targets.shape}.")
  err = jnp.square(outputs.astype(jnp.float32) - targets.astype(jnp.float32))
  return {"loss": jnp.mean(err, tuple(range(1, err.ndim)))}, None


def _identity(targets):
  return targets


CROSS_ENTROPY = Loss(sums=_class_sums, metrics=("loss", "accuracy"), ensemble=_log_mean_prob,
                     classes=_identity)
TOKEN_CROSS_ENTROPY = Loss(sums=_token_sums, metrics=("loss", "accuracy"), weighted=True,
                           ensemble=_log_mean_prob, classes=_token_classes)
NORMALIZED_CROSS_ENTROPY = Loss(sums=_normalized_class_sums, metrics=("loss", "accuracy"),
                                classes=_identity)
MSE = Loss(sums=_mse_sums, metrics=("loss",), ensemble=_cumulative_mean)
