"""2-D filter-normalised surface L(t* + a d1 + b d2) around a checkpoint (Li et al. 2018, Fig. 5).

51 x 51 on [-1, 1]^2 (the paper's default), biases and BatchNorm parameters not perturbed
(ignore="biasbn"), BatchNorm with the centre's statistics (``:recompute`` recomputes them at every
point on the training split instead). ``:quick`` uses an 11 x 11 grid. Options combine with commas.
"""

from configs import defaults


def get_config(arg=None):
  opts = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = opts - {"quick", "recompute"}
  if unknown:
    raise ValueError(f"Unknown surface_2d options {sorted(unknown)}; use quick, recompute.")
  n = 11 if "quick" in opts else 51
  return defaults.surface(mode="random", dim=2, x=(-1.0, 1.0, n), y=(-1.0, 1.0, n),
                        bn="recompute" if "recompute" in opts else "center")
