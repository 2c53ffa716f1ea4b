"""Bezier curve between two MLPs trained here on the embedded 8x8 digits (about a minute on a CPU).

Measured (2 shared CPU cores, 17 s of CPU time): straight line train-loss barrier 0.31 and test
error up to 13.8 %; trained curve barrier 0.03 and test error at most 3.1 % (endpoints 2.7 and
2.2 %). ``connect_digits.py:resnet8`` uses a BatchNorm ResNet (statistics recomputed per point).
"""

from configs import defaults


def get_config(arg=None):
  model = arg or "mlp"
  return defaults.connect(model=model, model_kwargs={"features": (32,)} if model == "mlp" else {})
