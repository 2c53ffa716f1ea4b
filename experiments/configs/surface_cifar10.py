"""Full-scale CIFAR-10 surfaces with Li et al. (2018)'s settings (not for CI: hours on one GPU).

51 x 51 on [-1, 1]^2 (1-D: 51 points), filter normalisation, ignore="biasbn", BatchNorm with the
centre's statistics, train loss/accuracy over all 50,000 training images and test over 10,000.
The paper: a ResNet-56 51 x 51 surface took about an hour on 4 GPUs with the reference code.

Options (train the run first with experiments/configs/cifar10_*.py into runs/cifar10_<name>):
  resnet56 | resnet56_noshort | resnet110 | resnet110_noshort | resnet20 (Fig. 5, 6),
  wrn56_2 | wrn56_8 (Fig. 6: width),
  vgg9 (Fig. 3-4: 1-D, batch 128 vs 8192 overlaid; runs/cifar10_vgg9_bs128, _bs8192),
  interpolation (vgg9 batch 128 -> 8192, 401 points on [-0.5, 1.5], Fig. 3).
Compute (estimate, one A100/H100-class GPU): a 51 x 51 surface evaluates 60,000 images at 2601
points: ResNet-56 ~36 PFLOP (0.5-1 GPU-hour), ResNet-110 ~1-2, WRN-56-8 ~2.3 EFLOP (6-25);
the 51-point VGG-9 plots and the 401-point interpolation take minutes.
"""

from configs import defaults

_SURFACES = ("resnet20", "resnet56", "resnet56_noshort", "resnet110", "resnet110_noshort",
             "wrn56_2", "wrn56_8")


def get_config(arg=None):
  arg = arg or "resnet56"
  common = dict(dataset="cifar10", eval_batch_size=1000)
  if arg in _SURFACES:
    return defaults.surface(mode="random", dim=2, x=(-1.0, 1.0, 51), y=(-1.0, 1.0, 51),
                          runs=(f"runs/cifar10_{arg}",), **common)
  if arg == "vgg9":
    return defaults.surface(mode="random", dim=1, x=(-1.0, 1.0, 51),
                          runs=("runs/cifar10_vgg9_bs128", "runs/cifar10_vgg9_bs8192"),
                          labels=("batch 128", "batch 8192"), **common)
  if arg == "interpolation":
    return defaults.surface(mode="interpolation", dim=1, x=(-0.5, 1.5, 401),
                          runs=("runs/cifar10_vgg9_bs128", "runs/cifar10_vgg9_bs8192"),
                          labels=("batch 128", "batch 8192"), **common)
  known = (*_SURFACES, "vgg9", "interpolation")
  raise ValueError(f"Unknown option {arg!r}; choose one of {known}.")
