"""The plane through three models t1, t2, t3: L(t1 + a (t2 - t1) + b (t3 - t1)), no normalisation
(Li et al. 2018; Garipov et al. 2018). t1, t2, t3 sit at (0, 0), (1, 0), (0, 1).

41 x 41 on [-0.5, 1.5]^2 (``:quick``: 11 x 11). Set ``--config.runs="('a', 'b', 'c')"``.
"""

from configs import defaults


def get_config(arg=None):
  n = 11 if arg == "quick" else 41
  return defaults.surface(mode="plane", dim=2, x=(-0.5, 1.5, n), y=(-0.5, 1.5, n),
                        runs=("runs/digits_mlp_a", "runs/digits_mlp_b", "runs/digits_mlp_c"))
