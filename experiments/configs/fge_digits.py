"""FGE on the embedded 8x8 digits with a small MLP: about a minute on a CPU.

A budget is 20 epochs; FGE adds 4-epoch cycles (lr 0.2 -> 1e-3 -> 0.2) to one trained model.
"""

from configs import defaults


def get_config(arg=None):
  model = arg or "mlp"
  return defaults.fge(model=model, model_kwargs={"features": (32,)} if model == "mlp" else {})
