"""Directions and their normalisation against hand computations (Li et al. 2018)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import landscape_jax as lj


def _params(key=0):
  k = jax.random.split(jax.random.key(key), 5)
  return {
    "Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 4)),
               "bias": jax.random.normal(k[1], (4,))},
    "BatchNorm_0": {"scale": jnp.ones(4) * 1.5, "bias": jnp.full(4, 0.2)},
    "Dense_0": {"kernel": jax.random.normal(k[2], (36, 5)), "bias": jax.random.normal(k[3], (5,))},
  }


def _hand_filter(d, w, with_w=True):
  """Per output unit f (last axis): d[..., f] * ||w[..., f]|| / (||d[..., f]|| + 1e-10)."""
  d, w = np.asarray(d, np.float64), np.asarray(w, np.float64)
  out = np.empty_like(d)
  for f in range(d.shape[-1]):
    wf = np.linalg.norm(w[..., f].ravel()) if with_w else 1.0
    out[..., f] = d[..., f] * wf / (np.linalg.norm(d[..., f].ravel()) + 1e-10)
  return out


def test_random_direction_structure_and_independence():
  p = _params()
  d = lj.random_direction(jax.random.key(1), p)
  assert jax.tree.structure(d) == jax.tree.structure(p)
  for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(p), strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
  big = lj.random_direction(jax.random.key(2), {"w": jnp.zeros((200, 100))})["w"]
  assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
  with pytest.raises(ValueError, match="floating-point"):
    lj.random_direction(jax.random.key(0), {"step": jnp.zeros((), jnp.int32)})


@pytest.mark.parametrize("layer", ["Conv_0", "Dense_0"])
def test_filter_norm_matches_hand_computation(layer):
  p = _params()
  d = lj.random_direction(jax.random.key(3), p)
  n = lj.normalize_directions(d, p, norm="filter", ignore="biasbn")
  np.testing.assert_allclose(n[layer]["kernel"], _hand_filter(d[layer]["kernel"],
                                                              p[layer]["kernel"]), rtol=1e-5)
  # each output unit now has the norm of the corresponding filter of w
  w = np.asarray(p[layer]["kernel"])
  got = np.asarray(n[layer]["kernel"])
  for f in range(w.shape[-1]):
    np.testing.assert_allclose(np.linalg.norm(got[..., f]), np.linalg.norm(w[..., f]), rtol=1e-5)
  nd = lj.normalize_directions(d, p, norm="dfilter", ignore="biasbn")
  np.testing.assert_allclose(nd[layer]["kernel"],
                             _hand_filter(d[layer]["kernel"], p[layer]["kernel"], False), rtol=1e-5)


def test_layer_weight_dlayer_none_norms():
  p = _params()
  d = lj.random_direction(jax.random.key(4), p)
  for layer in ("Conv_0", "Dense_0"):
    dk, wk = np.asarray(d[layer]["kernel"], np.float64), np.asarray(p[layer]["kernel"], np.float64)
    got = lj.normalize_directions(d, p, norm="layer")[layer]["kernel"]
    np.testing.assert_allclose(got, dk * np.linalg.norm(wk) / np.linalg.norm(dk), rtol=1e-5)
    got = lj.normalize_directions(d, p, norm="dlayer")[layer]["kernel"]
    np.testing.assert_allclose(got, dk / np.linalg.norm(dk), rtol=1e-5)
    got = lj.normalize_directions(d, p, norm="weight")[layer]["kernel"]
    np.testing.assert_allclose(got, dk * wk, rtol=1e-6)
    got = lj.normalize_directions(d, p, norm=None)[layer]["kernel"]
    np.testing.assert_array_equal(got, d[layer]["kernel"])


@pytest.mark.parametrize("norm", ["filter", "layer", "weight", "dfilter", "dlayer", None])
def test_biasbn_zeroes_exactly_the_1d_leaves(norm):
  p = _params()
  d = lj.random_direction(jax.random.key(5), p)
  n = lj.normalize_directions(d, p, norm=norm, ignore="biasbn")
  for path, leaf in zip(lj.trees.leaf_paths(n), jax.tree.leaves(n), strict=True):
    if leaf.ndim <= 1:
      assert not np.any(np.asarray(leaf)), path
    else:
      assert np.all(np.asarray(leaf) != 0), path
  # ignore=None copies w into the 1-D leaves (as the reference code does)
  keep = lj.normalize_directions(d, p, norm=norm, ignore=None)
  np.testing.assert_array_equal(keep["BatchNorm_0"]["scale"], p["BatchNorm_0"]["scale"])
  np.testing.assert_array_equal(keep["Dense_0"]["bias"], p["Dense_0"]["bias"])


def test_bad_inputs():
  p = _params()
  d = lj.random_direction(jax.random.key(6), p)
  with pytest.raises(ValueError, match="Unknown norm"):
    lj.normalize_directions(d, p, norm="filters")
  with pytest.raises(ValueError, match="Unknown ignore"):
    lj.normalize_directions(d, p, ignore="bn")
  with pytest.raises(ValueError, match="same pytree structure"):
    lj.normalize_directions({"Dense_0": d["Dense_0"]}, p)
  zero = jax.tree.map(jnp.zeros_like, d)
  with pytest.raises(ValueError, match="direction is zero"):
    lj.normalize_directions(zero, p, norm="layer")
  # filter normalisation has an epsilon: a zero direction stays zero, no NaN
  z = lj.normalize_directions(zero, p, norm="filter")
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(z))


def test_orthogonalize_and_random_directions_options():
  p = _params()
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]).astype(np.float64)
  a, b = (lj.random_direction(jax.random.key(k), p) for k in (8, 9))
  o = lj.orthogonalize(b, a)
  assert abs(flat(o) @ flat(a)) < 1e-4 * np.linalg.norm(flat(a)) * np.linalg.norm(flat(o))
  np.testing.assert_allclose(np.linalg.norm(flat(o)), np.linalg.norm(flat(b)), rtol=1e-5)
  r = lj.orthogonalize(b, a, normalize_to="none")
  fa, fb = flat(a), flat(b)
  np.testing.assert_allclose(flat(r), fb - (fb @ fa) / (fa @ fa) * fa, rtol=1e-4, atol=1e-5)
  s1, s2 = lj.random_directions(jax.random.key(7), p, same_direction=True)
  np.testing.assert_array_equal(flat(s1), flat(s2))
  (one,) = lj.random_directions(jax.random.key(7), p, num=1)
  np.testing.assert_array_equal(flat(one), flat(s1))  # the 1-D direction is the 2-D x direction
  with pytest.raises(ValueError, match="zero"):
    lj.orthogonalize(b, jax.tree.map(jnp.zeros_like, a))


def _cos(a, b):
  fa, fb = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]).astype(np.float64)
            for t in (a, b))
  return abs(fa @ fb) / (np.linalg.norm(fa) * np.linalg.norm(fb))


@pytest.mark.parametrize("norm", ["filter", "layer", "dfilter", "dlayer", "weight", None])
def test_orthogonal_random_directions_are_orthogonal_and_normalised(norm):
  """orthogonal=True: |cos(d1, d2)| at float32 rounding (independent draws of these 262
  parameters give ~1e-2, and so did the former orthogonalise-then-normalise), d1 unchanged, and
  d2 normalised as `normalize_directions` documents."""
  p = _params()
  key = jax.random.key(3)
  d1, d2 = lj.random_directions(key, p, orthogonal=True, norm=norm)
  n1, n2 = lj.random_directions(key, p, norm=norm)
  assert _cos(n1, n2) > 1e-4  # the draws are not orthogonal by themselves
  assert _cos(d1, d2) < 1e-6, _cos(d1, d2)
  jax.tree.map(np.testing.assert_array_equal, d1, n1)
  for path, (x, w) in zip(lj.trees.leaf_paths(p), zip(jax.tree.leaves(d2), jax.tree.leaves(p),
                                                        strict=True), strict=True):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    if w.ndim <= 1:
      assert np.all(x == 0), path  # ignore="biasbn"
      continue
    unit = (lambda a: np.linalg.norm(a.reshape(-1, a.shape[-1]), axis=0)) if norm in (
      "filter", "dfilter") else np.linalg.norm
    if norm in ("filter", "layer"):
      np.testing.assert_allclose(unit(x), unit(w), rtol=1e-5, err_msg=path)
    elif norm in ("dfilter", "dlayer"):
      np.testing.assert_allclose(unit(x), 1.0, rtol=1e-5, err_msg=path)
  if norm == "filter":  # d2's filters: Gram-Schmidt of n2's against d1's, rescaled (numpy)
    for x, a, b, w in zip(*(jax.tree.leaves(t) for t in (d2, d1, n2, p)), strict=True):
      if np.ndim(w) < 2:
        continue
      a, b = (np.asarray(t, np.float64).reshape(-1, np.shape(w)[-1]) for t in (a, b))
      r = b - (a * b).sum(0) / (a * a).sum(0) * a
      want = r * np.linalg.norm(b, axis=0) / np.linalg.norm(r, axis=0)
      np.testing.assert_allclose(np.asarray(x).reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_directions_from_models():
  t1, t2, t3 = _params(0), _params(1), _params(2)
  x, y = lj.directions_from_models(t1, t2, t3)
  got = lj.plane_point(t1, x, y, 1.0, 0.0)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(t2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  got = lj.plane_point(t1, x, y, 0.0, 1.0)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(t3), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="same pytree structure"):
    lj.directions_from_models(t1, {"Dense_0": t2["Dense_0"]})


_shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5)
_floats = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=15, deadline=None)
@given(data=st.data(), shape=_shapes)
def test_property_filter_norm_scale_invariance(data, shape):
  """Filter normalisation: unit norms match w's; invariant to scaling d; w scaled -> d scaled."""
  w = data.draw(hnp.arrays(np.float32, shape, elements=_floats))
  d = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0.5, 2.0, width=32)))
  n = np.asarray(lj.normalize_directions({"k": d}, {"k": w}, norm="filter")["k"], np.float64)
  for f in range(shape[-1]):
    np.testing.assert_allclose(np.linalg.norm(n[..., f]), np.linalg.norm(w[..., f]),
                               rtol=1e-4, atol=1e-6)
  n3 = lj.normalize_directions({"k": 3 * d}, {"k": w}, norm="filter")["k"]
  np.testing.assert_allclose(n3, n, rtol=1e-4, atol=1e-6)
  n2 = lj.normalize_directions({"k": d}, {"k": 2 * w}, norm="filter")["k"]
  np.testing.assert_allclose(n2, 2 * n, rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(data=st.data(), shape=_shapes)
def test_property_orthogonalize(data, shape):
  a = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0.5, 2.0, width=32)))
  b = data.draw(hnp.arrays(np.float32, shape, elements=_floats))
  o = np.asarray(lj.orthogonalize({"k": b}, {"k": a}, normalize_to="none")["k"], np.float64)
  a64 = a.astype(np.float64)
  assert abs(o.ravel() @ a64.ravel()) <= 1e-4 * (np.linalg.norm(a64) * np.linalg.norm(b) + 1e-3)
  # orthogonalising twice changes nothing more
  o2 = lj.orthogonalize({"k": o.astype(np.float32)}, {"k": a}, normalize_to="none")["k"]
  np.testing.assert_allclose(o2, o, atol=1e-3 * (np.linalg.norm(b) + 1))


# ------------------------------------------------------------------ layouts: the output axis


def _torch_params(key=0):
  """PyTorch layouts: Conv2d weight (out, in, kh, kw), Linear weight (out, in)."""
  k = jax.random.split(jax.random.key(key), 4)
  return {"conv": {"weight": jax.random.normal(k[0], (4, 2, 3, 3)),
                   "bias": jax.random.normal(k[1], (4,))},
          "fc": {"weight": jax.random.normal(k[2], (5, 36)), "bias": jax.random.normal(k[3], (5,))}}


def _hand_filter_first(d, w, with_w=True):
  """Per output unit f (FIRST axis, loops only): d[f] * ||w[f]|| / (||d[f]|| + 1e-10)."""
  d, w = np.asarray(d, np.float64), np.asarray(w, np.float64)
  out = np.empty_like(d)
  for f in range(d.shape[0]):
    wf = np.sqrt(sum(v * v for v in w[f].ravel())) if with_w else 1.0
    df = np.sqrt(sum(v * v for v in d[f].ravel()))
    out[f] = d[f] * wf / (df + 1e-10)
  return out


@pytest.mark.parametrize("out_axis", [0, -4, "pytree", "callable"])
def test_filter_norm_on_pytorch_layouts_matches_hand_computation(out_axis):
  p = _torch_params()
  d = lj.random_direction(jax.random.key(11), p)
  if out_axis == "pytree":
    out_axis = {"conv": {"weight": 0, "bias": 0}, "fc": {"weight": 0, "bias": 0}}
  elif out_axis == "callable":
    out_axis = lambda path, leaf: 0 if path.endswith("weight") else -1
  elif out_axis == -4:  # -4 is axis 0 of the conv kernel only; the dense one needs -2
    out_axis = lambda path, leaf, a=out_axis: a if leaf.ndim == 4 else -2
  n = lj.normalize_directions(d, p, norm="filter", out_axis=out_axis)
  nd = lj.normalize_directions(d, p, norm="dfilter", out_axis=out_axis)
  for layer in ("conv", "fc"):
    np.testing.assert_allclose(n[layer]["weight"], _hand_filter_first(d[layer]["weight"],
                                                                      p[layer]["weight"]),
                               rtol=1e-5)
    np.testing.assert_allclose(nd[layer]["weight"],
                               _hand_filter_first(d[layer]["weight"], p[layer]["weight"], False),
                               rtol=1e-5)
    assert not np.any(np.asarray(n[layer]["bias"]))  # ignore="biasbn"
  # the default (last axis) normalises other units: the two disagree on these layouts
  last = lj.normalize_directions(d, p, norm="filter")
  assert not np.allclose(last["conv"]["weight"], n["conv"]["weight"], rtol=1e-3)


def test_pytorch_layout_equals_flax_layout_transposed():
  """Flax kernels with the default axis and their PyTorch transposes with out_axis=0 give the
  same (transposed) filter-normalised directions, and so do random_directions."""
  p = _params()
  to_torch = {"Conv_0": lambda k: jnp.transpose(k, (3, 2, 0, 1)), "Dense_0": lambda k: k.T}
  tp = {name: {**leaves, "kernel": to_torch[name](leaves["kernel"])} if name in to_torch
        else leaves for name, leaves in p.items()}
  d = lj.random_direction(jax.random.key(12), p)
  td = {name: {**leaves, "kernel": to_torch[name](leaves["kernel"])} if name in to_torch
        else leaves for name, leaves in d.items()}
  flax_n = lj.normalize_directions(d, p, norm="filter")
  torch_n = lj.normalize_directions(td, tp, norm="filter", out_axis=0)
  for name, fn in to_torch.items():
    np.testing.assert_allclose(torch_n[name]["kernel"], fn(flax_n[name]["kernel"]), rtol=1e-6)


def test_random_directions_with_out_axis_orthogonal_and_normalised():
  p = _torch_params(1)
  d1, d2 = lj.random_directions(jax.random.key(13), p, orthogonal=True, out_axis=0)
  (r1,) = lj.random_directions(jax.random.key(13), p, num=1, out_axis=0)
  jax.tree.map(np.testing.assert_array_equal, d1, r1)
  assert _cos(d1, d2) < 1e-6
  for layer in ("conv", "fc"):
    w = np.asarray(p[layer]["weight"], np.float64)
    for x, y in ((d1, d2), (d2, d1)):
      a, b = (np.asarray(t[layer]["weight"], np.float64).reshape(w.shape[0], -1) for t in (x, y))
      np.testing.assert_allclose(np.linalg.norm(a, axis=1),
                                 np.linalg.norm(w.reshape(w.shape[0], -1), axis=1), rtol=1e-5)
      np.testing.assert_allclose((a * b).sum(1), 0.0, atol=1e-5)  # filter by filter


def test_out_axis_bad_input_is_named():
  p = _torch_params()
  d = lj.random_direction(jax.random.key(14), p)
  with pytest.raises(ValueError, match=r"out_axis 4 is out of range for conv/weight of shape "
                     r"\(4, 2, 3, 3\) \(ndim 4\); give an axis in \[-4, 3\]"):
    lj.normalize_directions(d, p, out_axis=4)
  with pytest.raises(ValueError, match=r"out_axis -3 is out of range for fc/weight"):
    lj.random_directions(jax.random.key(0), p, out_axis=-3)
  with pytest.raises(ValueError, match="out_axis for fc/weight must be an integer"):
    lj.normalize_directions(d, p, out_axis=lambda path, leaf: 0 if path[:4] == "conv" else None)
  with pytest.raises(ValueError, match="out_axis for conv/weight must be an integer"):
    lj.normalize_directions(d, p, out_axis=1.0)
  with pytest.raises(ValueError, match="out_axis must be an int, a function"):
    lj.normalize_directions(d, p, out_axis={"conv": {"weight": 0}})
  assert lj.output_axes(p, 0) == {"conv": {"weight": 0, "bias": 0},
                                  "fc": {"weight": 0, "bias": 0}}
  assert lj.output_axes(p)["conv"]["weight"] == 3 and lj.output_axes(p, -2)["fc"]["weight"] == 0
