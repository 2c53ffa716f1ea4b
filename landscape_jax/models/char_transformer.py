"""A tiny character-level transformer language model in plain JAX (no model library).

The example of a model that is only a function over a params pytree: `init_char_transformer`
returns a nested dict of arrays and `char_transformer_apply(params, tokens) -> logits` is the
model, usable directly as the ``model`` of `make_metric_fn` / `make_loss_fn` (with
``loss=TOKEN_CROSS_ENTROPY``). Not part of the linen zoo (`get_model`).

A GPT-style decoder (Radford et al. 2019): token and learned position embeddings, ``depth``
pre-LayerNorm blocks ``x += Attn(LN(x))``, ``x += MLP(LN(x))`` with causal multi-head
self-attention ``softmax(q k^T / sqrt(d_head) + causal mask) v`` and a GELU MLP of width
``4 d``, a final LayerNorm and a linear read-out to the vocabulary. Kernels are ``(in, out)``.

References:
  Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser and Polosukhin 2017, "Attention Is
  All You Need".
  Radford, Wu, Child, Luan, Amodei and Sutskever 2019, "Language Models are Unsupervised
  Multitask Learners".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "char_transformer_apply",
  "init_char_transformer",
]

PyTree = Any


def _dense(key, n_in: int, n_out: int, *, bias: bool = True) -> dict:
  out = {"kernel": jax.random.normal(key, (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)}
  if bias:
    out["bias"] = jnp.zeros((n_out,), jnp.float32)
  return out


def _norm(width: int) -> dict:
  return {"scale": jnp.ones((width,), jnp.float32), "bias": jnp.zeros((width,), jnp.float32)}


def init_char_transformer(key: jax.Array, *, vocab_size: int, context: int, width: int = 32,
                          depth: int = 2, heads: int = 4) -> dict:
  """Parameters of the model: ``{"embed", "position", "block<i>", "final_norm", "head"}``."""
  if width % heads:
    raise ValueError(f"width ({width}) must be a multiple of heads ({heads}).")
  keys = jax.random.split(key, 3 + 4 * depth)
  params = {"embed": 0.02 * jax.random.normal(keys[0], (vocab_size, width), jnp.float32),
            "position": 0.02 * jax.random.normal(keys[1], (context, width), jnp.float32)}
  for i in range(depth):
    k = keys[3 + 4 * i: 7 + 4 * i]
    params[f"block{i}"] = {
      "norm1": _norm(width), "qkv": _dense(k[0], width, 3 * width, bias=False),
      "proj": _dense(k[1], width, width), "norm2": _norm(width),
      "mlp_in": _dense(k[2], width, 4 * width), "mlp_out": _dense(k[3], 4 * width, width)}
  params["final_norm"] = _norm(width)
  params["head"] = _dense(keys[2], width, vocab_size)
  return params


def _layer_norm(p: dict, x: jax.Array) -> jax.Array:
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _linear(p: dict, x: jax.Array) -> jax.Array:
  y = x @ p["kernel"]
  return y + p["bias"] if "bias" in p else y


def _attention(p: dict, x: jax.Array, heads: int) -> jax.Array:
  b, t, d = x.shape
  q, k, v = jnp.split(_linear(p["qkv"], x), 3, axis=-1)
  split = lambda a: a.reshape(b, t, heads, d // heads)
  scores = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / jnp.sqrt(d // heads)
  causal = jnp.tril(jnp.ones((t, t), bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, split(v)).reshape(b, t, d)
  return _linear(p["proj"], out)


def char_transformer_apply(params: dict, tokens: jax.Array, *, heads: int = 4) -> jax.Array:
  """Next-token logits ``(b, T, vocab)`` of int tokens ``(b, T)`` (T <= the context)."""
  t = tokens.shape[-1]
  x = params["embed"][tokens] + params["position"][:t]
  depth = sum(1 for k in params if k.startswith("block"))
  for i in range(depth):
    p = params[f"block{i}"]
    x = x + _attention(p, _layer_norm(p["norm1"], x), heads)
    h = jax.nn.gelu(_linear(p["mlp_in"], _layer_norm(p["norm2"], x)))
    x = x + _linear(p["mlp_out"], h)
  return _linear(params["head"], _layer_norm(params["final_norm"], x))
