"""PyTorch state_dicts into the zoo (landscape_jax.adapters.torch_weights): equal logits against
stored PyTorch logits of tiny Li et al. / Garipov et al. models (tests/data/torch, written by
scripts/make_torch_fixtures.py with tests/torch_zoo.py), and against PyTorch itself when it is
installed; the safetensors reader against hand-made bytes."""

import importlib.util
import json
import os
import struct

import jax
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import torch_weights as tw

DATA = os.path.join(os.path.dirname(__file__), "data", "torch")
CASES = {  # fixture name -> (zoo name, overrides); the same table as tests/torch_zoo.py
  "li_resnet8": ("resnet8", {"width": 0.25}),
  "li_resnet8_noshort": ("resnet8_noshort", {"width": 0.25}),
  "li_vgg9": ("vgg9_bn", {"width": 1 / 16}),
  "li_densenet": ("densenet_cifar", {"num_layers": (2, 2, 2, 2), "growth_rate": 4}),
  "garipov_vgg16": ("vgg16", {"width": 1 / 32}),
  "garipov_preresnet8": ("preresnet8", {"width": 0.25}),
  "garipov_preresnet11_bottleneck": ("preresnet11", {"width": 0.25, "bottleneck": True}),
  "garipov_wrn10_1": ("wrn10_1", {}),
}


@pytest.fixture(scope="module")
def stored():
  with np.load(os.path.join(DATA, "logits.npz"), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _flax_logits(name, overrides, state_dict, inputs):
  model = lj.get_model(name, num_classes=10, **overrides)
  variables = tw.torch_to_flax(model, state_dict)
  return np.asarray(jax.jit(model.apply)(variables, inputs.transpose(0, 2, 3, 1)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_the_stored_pytorch_logits(case, stored):
  name, overrides = CASES[case]
  sd = lj.read_torch_state_dict(os.path.join(DATA, f"{case}.safetensors"))
  logits = _flax_logits(name, overrides, sd, stored["inputs"])
  scale = np.abs(stored[case]).max()
  np.testing.assert_allclose(logits, stored[case], atol=1e-5 * max(scale, 1.0), rtol=1e-4)
  # The two inputs' logits differ well beyond the tolerance: a wrong early layer would show.
  assert np.abs(stored[case][0] - stored[case][1]).max() > 100 * 1e-5 * max(scale, 1.0)


def test_fixture_table_matches_the_torch_models():
  spec = importlib.util.find_spec("torch")
  if spec is None:
    pytest.skip("PyTorch is not installed (pip install 'landscape-jax[torch]')")
  from tests import torch_zoo
  assert {k: v[:2] for k, v in torch_zoo.CASES.items()} == CASES


@pytest.mark.parametrize("case", ["li_resnet8", "li_vgg9", "garipov_preresnet11_bottleneck"])
def test_logits_equal_pytorch_built_here(case, tmp_path):
  """With PyTorch installed: a fresh model (another seed), saved with torch.save, loaded through
  torch.load(weights_only=True), gives PyTorch's logits."""
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional extra)")
  from tests import torch_zoo
  model = torch_zoo.build(case, seed=7)
  x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    want = model(x).numpy()
  path = tmp_path / "model.pt"
  torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
  name, overrides = CASES[case]
  got = _flax_logits(name, overrides, lj.read_torch_state_dict(path), x.numpy())
  np.testing.assert_allclose(got, want, atol=1e-5 * max(np.abs(want).max(), 1.0), rtol=1e-4)


def _header_file(path, header, data):
  text = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_safetensors_by_hand(tmp_path):
  a = np.arange(6, dtype="<f4").reshape(2, 3)
  b = np.array([7, -1], dtype="<i8")
  bf16 = np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16
  data = a.tobytes() + b.tobytes() + bf16.astype("<u2").tobytes()
  _header_file(tmp_path / "m.safetensors", {
    "__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
    "c": {"dtype": "BF16", "shape": [2], "data_offsets": [40, 44]}}, data)
  out = tw.read_safetensors(tmp_path / "m.safetensors")
  np.testing.assert_array_equal(out["a"], a)
  np.testing.assert_array_equal(out["b"], b)
  np.testing.assert_array_equal(out["c"], [1.5, -2.0])
  # Round trip through the writer (header padded to 8 bytes, tensors sorted).
  path = tw.write_safetensors(tmp_path / "w.safetensors", {"z": a, "b": b}, {"k": "v"})
  raw = open(path, "rb").read()
  assert struct.unpack("<Q", raw[:8])[0] % 8 == 0
  back = tw.read_safetensors(path)
  np.testing.assert_array_equal(back["z"], a)
  np.testing.assert_array_equal(back["b"], b)
  # Corrupt files are named.
  _header_file(tmp_path / "bad.safetensors",
               {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 48]}}, a.tobytes())
  with pytest.raises(ValueError, match="outside"):
    tw.read_safetensors(tmp_path / "bad.safetensors")
  (tmp_path / "trunc.safetensors").write_bytes(struct.pack("<Q", 999) + b"{}")
  with pytest.raises(ValueError, match="truncated or not safetensors"):
    tw.read_safetensors(tmp_path / "trunc.safetensors")


def test_mismatches_name_the_keys():
  sd = lj.read_torch_state_dict(os.path.join(DATA, "li_resnet8.safetensors"))
  model = lj.get_model("resnet8", num_classes=10, width=0.25)
  wrong_width = lj.get_model("resnet8", num_classes=10, width=0.5)
  with pytest.raises(ValueError, match=r"shape \(4,\) after conversion.*has \(8,\).*width"):
    tw.torch_to_flax(wrong_width, sd)
  extra = {**sd, "head.weight": np.zeros((2, 2), np.float32)}
  with pytest.raises(ValueError, match="head.weight"):
    tw.torch_to_flax(model, extra)
  missing = {k: v for k, v in sd.items() if not k.startswith("linear.")}
  with pytest.raises(ValueError, match="params/linear/bias"):
    tw.torch_to_flax(model, missing)
  with pytest.raises(ValueError, match="VGG16BN is not supported"):
    tw.torch_name_map(lj.get_model("vgg16_bn", num_classes=10))
  with pytest.raises(ValueError, match="No PyTorch name map"):
    tw.torch_name_map(lj.get_model("mlp_small", num_classes=10))


def test_conversion_layouts_by_hand():
  """BN statistics land in batch_stats; conv OIHW -> HWIO and Linear (out, in) -> (in, out)."""
  sd = lj.read_torch_state_dict(os.path.join(DATA, "li_resnet8.safetensors"))
  v = lj.load_torch_weights("resnet8", os.path.join(DATA, "li_resnet8.safetensors"),
                            num_classes=10, width=0.25)
  np.testing.assert_array_equal(v["params"]["layer2_0"]["shortcut_conv"]["kernel"],
                                sd["layer2.0.shortcut.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v["params"]["linear"]["kernel"], sd["linear.weight"].T)
  np.testing.assert_array_equal(v["batch_stats"]["bn1"]["var"], sd["bn1.running_var"])
  np.testing.assert_array_equal(v["params"]["layer1_0"]["bn2"]["scale"], sd["layer1.0.bn2.weight"])


def test_pickle_checkpoints_need_torch(tmp_path):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("PyTorch is installed; the error is for environments without it")
  (tmp_path / "m.pt").write_bytes(b"\x80\x04not read")
  with pytest.raises(ImportError, match="safetensors"):
    lj.read_torch_state_dict(tmp_path / "m.pt")
