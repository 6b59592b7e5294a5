#!/usr/bin/env bash
# The runs behind the README's tables, in the order they were made. Each `train` resumes
# if its run directory already exists, so the script can be stopped and restarted at will.
# Two of these in parallel suit a 2-core machine (give HalfCheetah 1 MuJoCo thread each).
# Usage: scripts/paper_runs.sh [nav|halfcheetah|omniglot|all] [RUNS_DIR]
set -euo pipefail
what=${1:-all}
RUNS=${2:-runs}
DATA=${METARL_DATA:-../shared/data}
metarl() { .venv/bin/metarl "$@"; }

train() {  # train NAME CONFIG [options...]
  local out=$RUNS/$1; shift
  if [ -f "$out/config.yaml" ]; then metarl train --resume "$out" --quiet
  else metarl train "$@" --out "$out" --quiet; fi
}

if [[ $what == nav || $what == all ]]; then
  for seed in 0 1 2; do
    for m in anil maml; do train nav_${m}_s$seed configs/rl/navigation2d_$m.yaml --seed $seed; done
  done
  metarl summarize $RUNS/nav_anil_s? $RUNS/nav_maml_s? --tasks 40 --inner-steps 1
  metarl summarize $RUNS/nav_maml_s? --tasks 40 --inner-steps 1 --adapt head
fi

if [[ $what == halfcheetah || $what == all ]]; then
  for cfg in dir_anil dir_maml vel_anil vel_maml; do
    train hc_${cfg}_s0 configs/rl/halfcheetah_$cfg.yaml --seed 0 --set env.settings.nthread=1
  done
  metarl summarize $RUNS/hc_*_s0 --tasks 40 --inner-steps 1
  metarl summarize $RUNS/hc_dir_maml_s0 $RUNS/hc_vel_maml_s0 --tasks 40 --inner-steps 1 --adapt head
fi

if [[ $what == omniglot || $what == all ]]; then
  C=configs/classification
  train cls_omni5_anil_s0 $C/omniglot_5w1s_anil.yaml --seed 0 --data-root $DATA \
    --set training.iterations=6000 --set logging.snapshot_every=1000
  train cls_omni5_maml_s0 $C/omniglot_5w1s_maml.yaml --seed 0 --data-root $DATA \
    --set training.iterations=3000 --set logging.snapshot_every=500
  train cls_omni20_anil_s0 $C/omniglot_20w1s_anil.yaml --seed 0 --data-root $DATA \
    --set training.iterations=3000 --set logging.snapshot_every=1000
  train cls_omni5_maml_s1 $C/omniglot_5w1s_maml.yaml --seed 1 --data-root $DATA \
    --set training.iterations=3000 --set logging.snapshot_every=500
  train cls_omni5_anil_s1 $C/omniglot_5w1s_anil.yaml --seed 1 --data-root $DATA \
    --set training.iterations=6000 --set logging.snapshot_every=1000
  train cls_omni20_maml_s0 $C/omniglot_20w1s_maml.yaml --seed 0 --data-root $DATA \
    --set training.iterations=800 --set logging.snapshot_every=200
fi
