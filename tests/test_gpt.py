"""The GPT-2-shaped language model: GPT-2 small's parameter count, a causal forward pass, and its
linen partitioning metadata placed on a mesh with a model axis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import landscape_jax as lj


def test_gpt2_small_has_gpt2_small_parameter_count():
  model = lj.get_model("gpt2_small", num_classes=50257)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == 124_439_808  # Radford et al. 2019's 124 M (tied read-out)


def test_gpt_tiny_is_causal_and_learns_the_shapes():
  model = lj.get_model("gpt_tiny", num_classes=11)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 11)
  variables = model.init(jax.random.key(1), tokens)
  logits = model.apply(variables, tokens)
  assert logits.shape == (2, 12, 11) and logits.dtype == jnp.float32
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 11)  # the future does not leak backwards
  np.testing.assert_allclose(model.apply(variables, changed)[:, :7], logits[:, :7], atol=1e-6)
  assert not np.allclose(model.apply(variables, changed)[:, 7], logits[:, 7])
  with pytest.raises(ValueError, match="context"):
    model.apply(variables, jnp.zeros((1, 17), jnp.int32))


def test_gpt_tiny_hutchinson_sample_is_the_quadratic_form():
  """Hutchinson's sample by forward over forward (what `hessian_trace` runs: attention, layer
  norm, GELU, token cross-entropy) equals ``vdot(z, H z)`` of the forward-over-reverse product."""
  from landscape_jax.core import hessian as hs

  model = lj.get_model("gpt_tiny", num_classes=11)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 11)
  params = model.init(jax.random.key(1), tokens)["params"]
  loss_fn = lj.make_loss_fn(model, loss=lj.TOKEN_CROSS_ENTROPY)
  op = hs.flat_hvp_operator(loss_fn, params, (tokens[:, :-1], tokens[:, 1:]), None)
  z = jax.random.rademacher(jax.random.key(2), op.x0.shape, op.x0.dtype)
  want = float(jax.jit(lambda u: jnp.vdot(u, op.matvec(u)))(z))
  assert abs(float(jax.jit(op.quadratic)(z)) - want) <= 1e-4 * abs(want)


@pytest.mark.multidevice
def test_partitioning_metadata_becomes_shardings():
  model = lj.get_model("gpt_tiny", num_classes=11)
  params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  mesh = lj.make_mesh(points=2, model=4)
  placed = lj.partitioned_params(params, mesh)
  assert placed["block0"]["mlp_in"]["kernel"].sharding.spec == P(None, "model")
  assert placed["block0"]["mlp_out"]["kernel"].sharding.spec == P("model", None)
  assert placed["wte"]["embedding"].sharding.spec == P(None, "model")
  assert placed["block0"]["ln1"]["scale"].sharding.spec == P("model")  # unannotated: FSDP
  plain = lj.partitioned_params(params, lj.make_mesh(points=8))  # no model axis: replicated
  assert all(x.sharding.spec == P(None, None) or x.sharding.spec == P()
             for x in jax.tree.leaves(plain))
  unboxed = jax.tree.map(np.asarray, placed)
  np.testing.assert_array_equal(unboxed["block1"]["attn_qkv"]["kernel"],
                                params["block1"]["attn_qkv"]["kernel"].value)
