#!/usr/bin/env bash
# Reruns every digits-scale comparison of docs/reproductions.md end to end, sequentially, on a CPU.
#
#   scripts/reproduce_digits.sh              # everything (about 40 min on 2 busy CPU cores)
#   scripts/reproduce_digits.sh batch curve  # only some steps; see STEPS below
#
# Runs go to $RUNS (default runs/, gitignored). Every step resumes: train.py restarts from its last
# checkpoint, surface.py / connect.py / trajectory.py from their stores, so an interrupted run is
# finished by rerunning the same command. Grids are smaller than the papers' (31 points in 1-D,
# 15 x 15 in 2-D, 11 x 11 train loss only for the width and depth-56 pairs) to fit a CPU;
# pass N1=51 N2=51 N2S=51 for Li et al.'s resolution.
# At the end, the numbers of docs/reproductions.md are printed (scripts/reproduction_numbers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python}
RUNS=${RUNS:-runs}
N1=${N1:-31}
N2=${N2:-15}
N2S=${N2S:-11}  # the width and depth-56 comparisons: an 11 x 11 grid of the train loss only
STEPS=${*:-batch shortcuts20 curve fge align saddle hessian trajectory width shortcuts56 numbers}
CMP=experiments/configs/surface_digits_comparisons.py
GRID1=(--config.x="(-1.0,1.0,$N1)")
GRID2=(--config.dim=2 --config.x="(-1.0,1.0,$N2)" --config.y="(-1.0,1.0,$N2)")
GRID2S=(--config.dim=2 --config.x="(-1.0,1.0,$N2S)" --config.y="(-1.0,1.0,$N2S)"
        --config.splits="('train',)")
mkdir -p "$RUNS"

train() {  # train <config> <workdir> [flags...]
  local cfg=$1 wd=$2; shift 2
  "$PY" experiments/train.py --config="$cfg" --workdir="$RUNS/$wd" --noprogress "$@"
}

for step in $STEPS; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    batch)  # Li et al. Fig. 3/4 (sharp vs flat): batch 32 vs 1024, weight decay 5e-4 vs 0
      train experiments/configs/digits_mlp.py digits_mlp_bs32 --config.batch_size=32
      train experiments/configs/digits_mlp.py digits_mlp_bs1024 --config.batch_size=1024
      train experiments/configs/digits_mlp.py digits_mlp_wd0 --config.batch_size=32 \
        --config.weight_decay=0.0
      train experiments/configs/digits_mlp.py digits_mlp_bs1024_wd0 --config.batch_size=1024 \
        --config.weight_decay=0.0
      for c in batch:digits_mlp_bs1024 normalization:digits_mlp_bs1024 weight_decay:digits_mlp_wd0; do
        "$PY" experiments/surface.py --config="$CMP:${c%%:*}" "${GRID1[@]}" \
          --config.runs="('$RUNS/digits_mlp_bs32','$RUNS/${c#*:}')" \
          --workdir="$RUNS/cmp_${c%%:*}" --noprogress > "$RUNS/cmp_${c%%:*}.log"
      done
      # batch 1024 makes one step per epoch: 20 epochs leave it far from a minimum (train loss
      # 0.43). The same number of epochs is Li et al.'s protocol; 400 epochs (400 steps, still
      # fewer than batch 32's 840) let it converge, which separates sharpness from underfitting.
      train experiments/configs/digits_mlp.py digits_mlp_bs1024_e400 --config.batch_size=1024 \
        --config.num_epochs=400 --config.eval_every_epochs=50 --config.checkpoint_every_epochs=100
      "$PY" experiments/surface.py --config="$CMP:batch" "${GRID1[@]}" \
        --config.runs="('$RUNS/digits_mlp_bs32','$RUNS/digits_mlp_bs1024_e400')" \
        --config.labels="('batch 32, 20 epochs','batch 1024, 400 epochs')" \
        --workdir="$RUNS/cmp_batch_e400" --noprogress > "$RUNS/cmp_batch_e400.log"
      # weight decay 0 for both batch sizes (Li et al. Fig. 3 top row)
      "$PY" experiments/surface.py --config="$CMP:batch" "${GRID1[@]}" \
        --config.runs="('$RUNS/digits_mlp_wd0','$RUNS/digits_mlp_bs1024_wd0')" \
        --config.labels="('batch 32, wd 0','batch 1024, wd 0')" \
        --workdir="$RUNS/cmp_batch_wd0" --noprogress > "$RUNS/cmp_batch_wd0.log"
      ;;
    shortcuts20)  # Li et al. Fig. 5: ResNet-20 with vs without shortcuts, 2-D contours
      train experiments/configs/digits_resnet.py:resnet20 digits_resnet20
      train experiments/configs/digits_resnet.py:resnet20_noshort digits_resnet20_noshort
      "$PY" experiments/surface.py --config="$CMP:shortcuts" "${GRID2[@]}" \
        --config.runs="('$RUNS/digits_resnet20','$RUNS/digits_resnet20_noshort')" \
        --workdir="$RUNS/cmp_shortcuts20" --noprogress > "$RUNS/cmp_shortcuts20.log"
      ;;
    shortcuts56)  # Li et al. Fig. 5: the same at depth 56
      train experiments/configs/digits_resnet.py:resnet56 digits_resnet56
      train experiments/configs/digits_resnet.py:resnet56_noshort digits_resnet56_noshort
      "$PY" experiments/surface.py --config="$CMP:shortcuts" "${GRID2S[@]}" \
        --config.runs="('$RUNS/digits_resnet56','$RUNS/digits_resnet56_noshort')" \
        --config.labels="('ResNet-56','ResNet-56 no shortcuts')" \
        --workdir="$RUNS/cmp_shortcuts56" --noprogress > "$RUNS/cmp_shortcuts56.log"
      ;;
    width)  # Li et al. Fig. 6: ResNet-20 at width 1 (resnet20) vs 2 (wrn20_2)
      train experiments/configs/digits_resnet.py:resnet20 digits_resnet20
      train experiments/configs/digits_resnet.py:wrn20_2 digits_wrn20_2
      "$PY" experiments/surface.py --config="$CMP:shortcuts" "${GRID2S[@]}" \
        --config.runs="('$RUNS/digits_resnet20','$RUNS/digits_wrn20_2')" \
        --config.labels="('ResNet-20 k=1','ResNet-20 k=2')" \
        --workdir="$RUNS/cmp_width" --noprogress > "$RUNS/cmp_width.log"
      ;;
    curve)  # Garipov et al. Fig. 1 / Table: Bezier curve vs straight line between two minima
      "$PY" experiments/connect.py --config=experiments/configs/connect_digits.py \
        --workdir="$RUNS/connect_digits" --noprogress > "$RUNS/connect_digits.log"
      ;;
    fge)  # Garipov et al. Table 2: FGE vs independent ensembles at equal budget
      "$PY" experiments/fge.py --config=experiments/configs/fge_digits.py \
        --workdir="$RUNS/fge_digits" --noprogress > "$RUNS/fge_digits.log"
      ;;
    align)  # Ainsworth et al. 2023 Fig. 2: barrier before and after weight matching
      "$PY" experiments/align.py --config=experiments/configs/align_digits.py \
        --workdir="$RUNS/align_digits" --noprogress > "$RUNS/align_digits.log"
      ;;
    saddle)  # Brea et al. 2019: swap paths, permutation points, valleys
      "$PY" experiments/saddle.py --config=experiments/configs/align_saddle.py \
        --workdir="$RUNS/saddle_digits" --noprogress > "$RUNS/saddle_digits.log"
      ;;
    hessian)  # Li et al. Fig. 7 / PyHessian: top eigenvalues, trace, |lmin/lmax| map
      "$PY" experiments/hessian.py --config=experiments/configs/hessian_digits.py \
        --workdir="$RUNS/hessian_digits" --noprogress > "$RUNS/hessian_digits.log"
      ;;
    trajectory)  # Li et al. Fig. 9: PCA plane of the optimisation path
      "$PY" experiments/trajectory.py --config=experiments/configs/trajectory_digits.py \
        --workdir="$RUNS/trajectory_digits" --noprogress > "$RUNS/trajectory_digits.log"
      ;;
    numbers)
      "$PY" scripts/reproduction_numbers.py --runs="$RUNS"
      ;;
    *) echo "unknown step $step; known: $STEPS" >&2; exit 2 ;;
  esac
done
