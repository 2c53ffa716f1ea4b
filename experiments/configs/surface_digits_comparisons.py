r"""Small-scale reproductions of Li et al. (2018)'s comparisons on the embedded 8x8 digits.

Each option overlays the 1-D filter-normalised plots (51 points on [-1, 1]) of the runs it
compares; ``--config.dim=2`` draws the 2-D surface of each run instead. Train the runs first:

  batch (Fig. 3/4: small vs large batch, weight decay 5e-4):
    python experiments/train.py --config=experiments/configs/digits_mlp.py \
        --workdir=runs/digits_mlp_bs32 --config.batch_size=32
    python experiments/train.py --config=experiments/configs/digits_mlp.py \
        --workdir=runs/digits_mlp_bs1024 --config.batch_size=1024
  weight_decay (Fig. 4, wd 0 vs 5e-4): runs/digits_mlp_wd0 (--config.weight_decay=0) and
    runs/digits_mlp_bs32 as above;
  shortcuts (Fig. 5: ResNet-20 with and without skip connections):
    python experiments/train.py --config=experiments/configs/digits_resnet.py:resnet20 \
        --workdir=runs/digits_resnet20
    python experiments/train.py --config=experiments/configs/digits_resnet.py:resnet20_noshort \
        --workdir=runs/digits_resnet20_noshort
  normalization (Fig. 2 vs 4: the same pair without filter normalisation): the batch runs with
    norm=None, where the sharpness comparison flips with the weight scale.

Then: python experiments/surface.py --config=experiments/configs/surface_digits_comparisons.py:batch
--workdir=runs/cmp_batch
"""

from configs import defaults

_RUNS = {
  "batch": (("runs/digits_mlp_bs32", "runs/digits_mlp_bs1024"), ("batch 32", "batch 1024")),
  "weight_decay": (("runs/digits_mlp_bs32", "runs/digits_mlp_wd0"), ("wd 5e-4", "wd 0")),
  "shortcuts": (("runs/digits_resnet20", "runs/digits_resnet20_noshort"),
                ("ResNet-20", "ResNet-20 no shortcuts")),
  "normalization": (("runs/digits_mlp_bs32", "runs/digits_mlp_bs1024"),
                    ("batch 32 (no norm.)", "batch 1024 (no norm.)")),
}


def get_config(arg=None):
  arg = arg or "batch"
  if arg not in _RUNS:
    raise ValueError(f"Unknown comparison {arg!r}; choose one of {sorted(_RUNS)}.")
  runs, labels = _RUNS[arg]
  return defaults.surface(mode="random", dim=1, x=(-1.0, 1.0, 51), runs=runs, labels=labels,
                        norm=None if arg == "normalization" else "filter")
