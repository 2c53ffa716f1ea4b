r"""Writes the PyTorch fixtures of tests/test_torch_weights.py: for each tiny model of
tests/torch_zoo.py (Li et al.'s and Garipov et al.'s CIFAR networks at small widths), its
state_dict as ``tests/data/torch/<name>.safetensors`` and, in ``tests/data/torch/logits.npz``,
the NCHW inputs and the model's eval-mode logits on them.

  /path/to/torch/venv/bin/python scripts/make_torch_fixtures.py        # needs torch, safetensors

The state_dicts are written by the safetensors package itself, so the test also checks that
landscape_jax's numpy reader reads files that library writes. Runs in a second or two on a CPU.
"""

import argparse
import importlib.util
import os

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torch"))
  args = parser.parse_args(argv)
  spec = importlib.util.spec_from_file_location("torch_zoo",
                                                os.path.join(ROOT, "tests", "torch_zoo.py"))
  zoo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(zoo)
  os.makedirs(args.out, exist_ok=True)
  torch.manual_seed(1234)
  x = torch.randn(2, 3, 32, 32)
  arrays = {"inputs": x.numpy()}
  for name in zoo.CASES:
    model = zoo.build(name)
    with torch.no_grad():
      arrays[name] = model(x).numpy()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(args.out, f"{name}.safetensors"),
              metadata={"torch": torch.__version__, "case": name})
    size = os.path.getsize(os.path.join(args.out, f"{name}.safetensors"))
    print(f"{name}: {sum(v.numel() for v in sd.values())} values, {size / 1024:.0f} KB, "
          f"logits[0, :3] = {arrays[name][0, :3]}")
  np.savez(os.path.join(args.out, "logits.npz"), **arrays)


if __name__ == "__main__":
  main()
