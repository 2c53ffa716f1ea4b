"""Two-model linear interpolation L((1 - a) t1 + a t2) on 401 points of [-0.5, 1.5] (Li et al.
2018, Sec. 3; Goodfellow et al. 2015), with the Frankle and Entezari barriers in summary.json.

Set ``--config.runs="('runs/a', 'runs/b')"``, e.g. the small- and large-batch runs. BatchNorm
models: ``:recompute`` recomputes the statistics at every alpha (recommended; "center" uses the
first model's). ``:quick`` uses 41 points.
"""

from configs import defaults


def get_config(arg=None):
  opts = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = opts - {"quick", "recompute"}
  if unknown:
    raise ValueError(f"Unknown surface_interpolation options {sorted(unknown)}.")
  return defaults.surface(mode="interpolation", dim=1,
                        x=(-0.5, 1.5, 41 if "quick" in opts else 401),
                        runs=("runs/digits_mlp_a", "runs/digits_mlp_b"),
                        bn="recompute" if "recompute" in opts else "center")
