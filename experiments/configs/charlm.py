"""A tiny character-level transformer (2 layers, width 32, context 32) on the bundled text.

Trains two models for 400 Adam steps each, then a 11 x 11 filter-normalised surface, the
interpolation between the two and the Hessian spectrum: minutes on a laptop CPU. ``:quick``
shrinks every count for a smoke test.
"""

from configs import defaults


def get_config(arg=None):
  if arg in (None, ""):
    return defaults.charlm()
  if arg == "quick":
    return defaults.charlm(context=16, stride=8, width=16, depth=1, steps=60, x=(-1.0, 1.0, 3),
                           y=(-1.0, 1.0, 3), alphas=(0.0, 1.0, 3), top_k=2, num_steps=10,
                           density_probes=1, density_steps=10)
  raise ValueError(f"Unknown charlm option {arg!r}; use 'quick' or nothing.")
