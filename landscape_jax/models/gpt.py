"""A GPT-2-shaped decoder-only transformer in Flax linen, for landscapes at scale.

``GPT(num_classes=vocab_size, context=, width=, depth=, heads=)`` maps int tokens ``(b, T)`` to
next-token logits ``(b, T, vocab_size)``: token and learned position embeddings, ``depth``
pre-LayerNorm blocks ``x += Attn(LN(x))``, ``x += MLP(LN(x))`` (causal multi-head
self-attention ``softmax(q k^T / sqrt(d_head) + causal mask) v``, a GELU MLP of width ``4 d``),
a final LayerNorm and a read-out tied to the token embedding, as in GPT-2 (Radford et al. 2019).
``gpt2_small`` (`get_model`) has GPT-2 small's shape: 12 blocks, width 768, 12 heads, context
1024 and the 50257-token vocabulary: 124,439,808 parameters. ``gpt_tiny`` is a test-sized one.

Every kernel carries `nn.with_partitioning` metadata naming the mesh axis ``"model"`` on its
largest axis divisible by 8 (the width axis of the embeddings: 50257 tokens divide by nothing),
so ``nn.get_partition_spec`` gives
the shardings of a mesh with a model axis (`adapters.frameworks.partitioned_params`); biases and
LayerNorm parameters are replicated. Parameter names: ``wte``, ``wpe``, ``block{i}`` with
``ln1, attn_qkv, attn_proj, ln2, mlp_in, mlp_out`` inside, ``ln_f``. Kernels are ``(in, out)``.
The ``train`` argument is accepted for the zoo's calling convention; there is no dropout.

References:
  Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser and Polosukhin 2017, "Attention Is
  All You Need".
  Radford, Wu, Child, Luan, Amodei and Sutskever 2019, "Language Models are Unsupervised
  Multitask Learners".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
  "GPT",
  "GPT2_SMALL",
  "GPT_TINY",
]

GPT2_SMALL = {"context": 1024, "width": 768, "depth": 12, "heads": 12}
GPT_TINY = {"context": 16, "width": 32, "depth": 2, "heads": 4}
MODEL_AXIS = "model"


def _kernel(shape_axis: int):
  """Normal(0.02) kernel init, partitioned over the model axis on `shape_axis`."""
  names = [None, None]
  names[shape_axis] = MODEL_AXIS
  return nn.with_partitioning(nn.initializers.normal(0.02), tuple(names))


class _Block(nn.Module):
  width: int
  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    h = nn.LayerNorm(epsilon=1e-5, name="ln1", dtype=self.dtype)(x)
    # (d, 3d) and (d, 4d): the output axis is the largest; (4d, d): the input axis
    qkv = nn.Dense(3 * d, kernel_init=_kernel(1), name="attn_qkv", dtype=self.dtype)(h)
    q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in jnp.split(qkv, 3, -1))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.heads).astype(q.dtype)
    causal = jnp.tril(jnp.ones((t, t), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores.astype(jnp.float32), -1e9), axis=-1)
    att = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(b, t, d)
    x = x + nn.Dense(d, kernel_init=_kernel(0), name="attn_proj", dtype=self.dtype)(att)
    h = nn.LayerNorm(epsilon=1e-5, name="ln2", dtype=self.dtype)(x)
    h = nn.gelu(nn.Dense(4 * d, kernel_init=_kernel(1), name="mlp_in", dtype=self.dtype)(h))
    return x + nn.Dense(d, kernel_init=_kernel(0), name="mlp_out", dtype=self.dtype)(h)


class GPT(nn.Module):
  """GPT-2-style language model; ``num_classes`` is the vocabulary size.

  Attributes:
    num_classes: vocabulary size (the logits' last axis).
    context: the longest sequence (rows of the position embedding).
    width: model width d (a multiple of `heads`).
    depth: number of blocks.
    heads: attention heads.
    dtype: computation dtype (parameters stay float32, logits are float32).
  """

  num_classes: int
  context: int = GPT_TINY["context"]
  width: int = GPT_TINY["width"]
  depth: int = GPT_TINY["depth"]
  heads: int = GPT_TINY["heads"]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train  # no dropout
    if self.width % self.heads:
      raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads}).")
    t = tokens.shape[-1]
    if t > self.context:
      raise ValueError(f"Sequences of {t} tokens exceed the context of {self.context}.")
    wte = nn.Embed(self.num_classes, self.width, name="wte",
                   embedding_init=nn.with_partitioning(nn.initializers.normal(0.02),
                                                       (None, MODEL_AXIS)))
    wpe = self.param("wpe", nn.with_partitioning(nn.initializers.normal(0.01),
                                                 (None, MODEL_AXIS)),
                     (self.context, self.width))
    x = (wte(tokens) + jnp.asarray(wpe)[:t]).astype(self.dtype)
    for i in range(self.depth):
      x = _Block(self.width, self.heads, self.dtype, name=f"block{i}")(x)
    x = nn.LayerNorm(epsilon=1e-5, name="ln_f", dtype=self.dtype)(x)
    return wte.attend(x).astype(jnp.float32)  # tied read-out
