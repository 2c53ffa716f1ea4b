"""Methods that train: optimisers and schedules, the training loop, run directories and
checkpoints, curve training (Garipov et al. 2018) and ensembles (FGE, SWA).

`defaults` (the fields of a training config), `schedules` (optax optimisers and learning-rate
schedules), `loop` (the one resumable epoch loop `run_epochs`, its run directory `RunDir` and
`TrainSettings`), `training` (`TrainState`, the jitted steps and `train`), `rundir`
(the configuration, metrics and data identity of a run directory), `checkpoints` (orbax
checkpoints with checksums), `curve_training` (`train_curve`) and `ensembles` (`train_sgd`,
`fast_geometric_ensemble`, ensemble metrics).
"""

__all__ = [
  "checkpoints", "curve_training", "defaults", "ensembles", "loop", "rundir", "schedules",
  "training",
]
