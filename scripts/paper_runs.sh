#!/usr/bin/env bash
# The runs behind the README's tables, in the order they were made, then their tables
# (scripts/tables.sh, from these run directories) and analyses. Each `train` resumes
# if its run directory already exists, so the script can be stopped and restarted at will.
# Two of these in parallel suit a 2-core machine (give HalfCheetah 1 MuJoCo thread each).
# Usage: scripts/paper_runs.sh [nav|halfcheetah|omniglot|all] [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."  # every path here is relative to the repository root
what=${1:-all}
RUNS=${2:-runs}
DATA=${METARL_DATA:-../shared/data}
metarl() { .venv/bin/metarl "$@"; }

train() {  # train NAME CONFIG [options...]; a resume keeps only --data-root (where the data lies now)
  local out=$RUNS/$1 extra=() prev=
  shift
  if [ -f "$out/config.yaml" ]; then
    for arg in "$@"; do [ "$prev" = --data-root ] && extra=(--data-root "$arg"); prev=$arg; done
    metarl train --resume "$out" --quiet "${extra[@]}"
  else metarl train "$@" --out "$out" --quiet; fi
}

if [[ $what == nav || $what == all ]]; then
  for seed in 0 1 2; do
    for m in anil maml; do train nav_${m}_s$seed configs/rl/navigation2d_$m.yaml --seed $seed; done
  done
  metarl analyze $RUNS/nav_maml_s0 --tasks 40 --out results/analysis/nav_maml_s0
  metarl analyze $RUNS/nav_maml_s0 --tasks 40 --inner-steps 3 --out results/analysis/nav_maml_s0_3steps
  # ablations under the default action semantics (raw output clipped to +-0.1), where ANIL drifts
  for seed in 0 1 2; do
    for m in anil maml; do
      train nav_${m}_s${seed}_clip configs/rl/navigation2d_$m.yaml --seed $seed --set env.settings.action_rescale=false
      train nav_${m}_s${seed}_stepw configs/rl/navigation2d_$m.yaml --seed $seed \
        --set env.settings.action_rescale=false --set training.step_weighting=step
    done
  done
  train nav_anil_s2_fixedstd configs/rl/navigation2d_anil.yaml --seed 2 \
    --set env.settings.action_rescale=false --set policy.adapt_log_std=false
  scripts/tables.sh nav $RUNS
  metarl plot $RUNS/nav_{anil,maml}_s{0,1,2} --window 20 --ylim -60 -5 --out results/figures/navigation2d_curves.png
  metarl plot $RUNS/nav_{anil,maml}_s{0,1,2}_clip --window 20 --ylim -60 -5 --out results/figures/navigation2d_clip_curves.png \
    --title "2D-Navigation, default action semantics (raw output clipped to +-0.1), seeds 0-2"
fi

if [[ $what == halfcheetah || $what == all ]]; then
  for seed in 0 1 2; do  # seed 0 of every cell first; seeds 1 and 2 of Direction were started next
    for cfg in dir_anil dir_maml vel_anil vel_maml; do
      train hc_${cfg}_s$seed configs/rl/halfcheetah_$cfg.yaml --seed $seed --set env.settings.nthread=1
    done
  done
  # ANIL-Direction ablations, seed 0: the log-std kept out of the inner loop (stopped at iteration
  # 416 to free the cores), a 5x inner step for the head, and Finn et al.'s 100x100 ReLU policy
  train hc_dir_anil_s0_fixedstd configs/rl/halfcheetah_dir_anil.yaml --seed 0 --set env.settings.nthread=1 \
    --set policy.adapt_log_std=false
  train hc_dir_anil_s0_lr05 configs/rl/halfcheetah_dir_anil.yaml --seed 0 --set env.settings.nthread=1 \
    --set adaptation.inner_lr=0.5
  train hc_dir_anil_s0_relu100 configs/rl/halfcheetah_dir_anil.yaml --seed 0 --set env.settings.nthread=1 \
    --set policy.hidden_sizes=[100,100] --set policy.activation=relu
  # Finn et al.'s rllab setting (horizon 200, no frame skip, centre-of-mass velocity, 100x100 ReLU),
  # where MAML's published 293.2 can be checked; 320,000 transitions per iteration, 12-26 s each here
  for m in maml anil; do
    train hc_dir_${m}_rllab_s0 configs/rl/halfcheetah_dir_${m}_rllab.yaml --seed 0 --set env.settings.nthread=1
  done
  for s in 1 2 3; do
    for m in anil maml; do
      train hc_dir_${m}_rllab_s$s configs/rl/halfcheetah_dir_${m}_rllab.yaml --seed $s --set env.settings.nthread=1
    done
  done
  # rllab's clip of the baseline's observations, for the two seeds that stalled without it
  for s in 2 1; do
    train hc_dir_anil_rllab_s${s}_clip10 configs/rl/halfcheetah_dir_anil_rllab.yaml --seed $s --set env.settings.nthread=1 \
      --set training.baseline_clip_obs=10
  done
  # a fifth ANIL seed in the rllab setting
  train hc_dir_anil_rllab_s4 configs/rl/halfcheetah_dir_anil_rllab.yaml --seed 4 --set env.settings.nthread=1
  # rllab's observed centre of mass and reset noise too: two seeds that stalled without them (1, 2), one that
  # learned (0) and one that stalled (4)
  for s in 1 2 0 4; do
    train hc_dir_anil_rllab_s${s}_rllabenv configs/rl/halfcheetah_dir_anil_rllab.yaml --seed $s --set env.settings.nthread=1 \
      --set env.settings.obs_position=com --set env.settings.reset_noise=rllab
  done
  # pytorch-maml-rl's first release (HalfCheetahDir-v1: frame skip 5, 200 steps, the raw output clipped
  # to [-1, 1] as the control, 100x100 ReLU), the PyTorch code of the ANIL paper's time; seeds 0 and 1 ran together,
  # then ANIL seed 2 beside MAML seed 0, later seeds 3 and 4 together, seed 5 beside MAML seed 2
  for s in 0 1 2 3 4 5; do
    train hc_dir_anil_v1_s$s configs/rl/halfcheetah_dir_anil_v1.yaml --seed $s --set env.settings.nthread=1
  done
  train hc_dir_maml_v1_s0 configs/rl/halfcheetah_dir_maml_v1.yaml --seed 0 --set env.settings.nthread=1
  train hc_dir_maml_v1_s1 configs/rl/halfcheetah_dir_maml_v1.yaml --seed 1 --set env.settings.nthread=1  # beside ANIL-Velocity seed 1
  train hc_dir_maml_v1_s2 configs/rl/halfcheetah_dir_maml_v1.yaml --seed 2 --set env.settings.nthread=1  # beside ANIL seed 5; resumed at 109 on 2 threads (the same bits)
  # seed 0, which stalled, again with that release's last detail: the post batch's baseline fitted on the pre batch
  train hc_dir_anil_v1_s0_prebase configs/rl/halfcheetah_dir_anil_v1.yaml --seed 0 --set env.settings.nthread=1 \
    --set training.post_baseline=pre
  # seed 2, whose return fell from its peak, on to 1,000 iterations as that release's README command ran
  # (here its 500-iteration run resumed with --set training.iterations=1000, beside MAML-Velocity seed 1: the same bits)
  train hc_dir_anil_v1_s2_1000 configs/rl/halfcheetah_dir_anil_v1.yaml --seed 2 --set env.settings.nthread=1 \
    --set training.iterations=1000
  # Velocity in that release's setting too (HalfCheetahVel-v1, goals uniform in [0, 2]), ANIL beside MAML
  for m in anil maml; do
    train hc_vel_${m}_v1_s0 configs/rl/halfcheetah_vel_${m}_v1.yaml --seed 0 --set env.settings.nthread=1
  done
  train hc_vel_anil_v1_s1 configs/rl/halfcheetah_vel_anil_v1.yaml --seed 1 --set env.settings.nthread=1
  train hc_vel_maml_v1_s1 configs/rl/halfcheetah_vel_maml_v1.yaml --seed 1 --set env.settings.nthread=2  # alone, then beside ANIL seed 2's 1,000
  # the reference setting (setups.md: 64x64 tanh, the output divided by 10) with the original 200-step episodes,
  # the one change v1 made that the paper's Velocity scale needs; ANIL seeds 0 and 1 ran side by side, seed 2 after them,
  # seed 3 beside MAML seed 2
  for s in 0 1 2 3; do
    train hc_dir_anil_h200_s$s configs/rl/halfcheetah_dir_anil.yaml --seed $s --set env.horizon=200 --set env.settings.nthread=1
  done
  # MAML there too, for ANIL against MAML on one scale (seeds 0 and 1 side by side, seed 2 alone then beside ANIL seed 3)
  for s in 0 1 2; do
    train hc_dir_maml_h200_s$s configs/rl/halfcheetah_dir_maml.yaml --seed $s --set env.horizon=200 --set env.settings.nthread=1
  done
  for run in hc_{dir,vel}_maml_s{0,1,2} hc_dir_maml_rllab_s{0,1,2,3} hc_dir_maml_v1_s{0,1,2} hc_vel_maml_v1_s{0,1}; do  # before tables.sh
    metarl analyze $RUNS/$run --tasks 8 --out results/analysis/$run
    metarl analyze $RUNS/$run --tasks 8 --inner-steps 3 --out results/analysis/${run}_3steps
  done
  scripts/tables.sh halfcheetah $RUNS
  metarl plot $RUNS/hc_dir_{anil,maml}_rllab_s? --out results/figures/halfcheetah_dir_rllab_curves.png \
    --title "HalfCheetah-Dir, Finn et al.'s rllab setting (horizon 200), every seed"
  metarl plot $RUNS/hc_dir_anil_s{0,1,2} $RUNS/hc_dir_maml_s{0,1,2} --out results/figures/halfcheetah_dir_curves.png \
    --title "HalfCheetah-Direction, seeds 0-2"
  metarl plot $RUNS/hc_dir_anil_s0{,_fixedstd,_lr05,_relu100} --out results/figures/halfcheetah_dir_anil_ablations.png \
    --title "ANIL HalfCheetah-Dir seed 0: default, fixed log-std, step 0.5, ReLU 100x100"
  metarl plot $RUNS/hc_dir_anil_v1_s{0,1,2,3,4,5} $RUNS/hc_dir_maml_v1_s{0,1,2} --out results/figures/halfcheetah_dir_v1_curves.png \
    --title "HalfCheetah-Dir, pytorch-maml-rl v1's setting: ANIL seeds 0-5, MAML seeds 0-2"
  metarl plot $RUNS/hc_dir_anil_h200_s{0,1,2,3} $RUNS/hc_dir_anil_s{0,1,2} --out results/figures/halfcheetah_dir_h200_curves.png \
    --title "HalfCheetah-Dir ANIL, reference setting: 200-step episodes (seeds 0-3) and 100 (seeds 0-2)"
  metarl plot $RUNS/hc_dir_anil_h200_s{0,1,2,3} $RUNS/hc_dir_maml_h200_s{0,1,2} --out results/figures/halfcheetah_dir_h200_anil_vs_maml.png \
    --title "HalfCheetah-Dir, reference setting with 200-step episodes: ANIL seeds 0-3, MAML seeds 0-2"
  metarl plot $RUNS/hc_vel_anil_v1_s{0,1} $RUNS/hc_vel_maml_v1_s{0,1} --out results/figures/halfcheetah_vel_v1_curves.png \
    --title "HalfCheetah-Vel, pytorch-maml-rl v1's setting: ANIL seeds 0-1, MAML seeds 0-1"
  metarl plot $RUNS/hc_vel_anil_s{0,1,2} $RUNS/hc_vel_maml_s{0,1,2} --out results/figures/halfcheetah_vel_curves.png \
    --title "HalfCheetah-Velocity, seeds 0-2 (40 tasks x 20 trajectories per iteration)"
fi

if [[ $what == omniglot || $what == all ]]; then
  # Iteration budgets fit a 2-core CPU (the paper trains 30,000+ iterations on a GPU).
  C=configs/classification
  O=(--data-root $DATA)
  train cls_omni5_anil_s0 $C/omniglot_5w1s_anil.yaml --seed 0 "${O[@]}" \
    --set training.iterations=6000 --set logging.snapshot_every=1000
  train cls_omni20_anil_s0 $C/omniglot_20w1s_anil.yaml --seed 0 "${O[@]}" \
    --set training.iterations=3000 --set logging.snapshot_every=500
  train cls_omni20_maml_s0 $C/omniglot_20w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=500 --set logging.snapshot_every=100
  for s in 0 1; do
    train cls_omni5_maml_s$s $C/omniglot_5w1s_maml.yaml --seed $s "${O[@]}" \
      --set training.iterations=1000 --set logging.snapshot_every=250
  done
  # Figure 2 / 3 model: the same seed-0 MAML run trained to 5,000 iterations (this is what resuming
  # cls_omni5_maml_s0 with --set training.iterations=5000 gives: resumes restore every RNG state)
  train cls_omni5_maml_s0_5000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=5000 --set logging.snapshot_every=500
  # ... and on to 10,000 (the local run was resumed in place with training.iterations=10000)
  train cls_omni5_maml_s0_10000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=10000 --set logging.snapshot_every=500
  train cls_omni5_maml_s0_20000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=20000 --set logging.snapshot_every=500
  train cls_omni5_maml_s0_30000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=30000 --set logging.snapshot_every=500
  train cls_omni5_maml_s0_45000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=45000 --set logging.snapshot_every=500
  train cls_omni5_maml_s0_60000 $C/omniglot_5w1s_maml.yaml --seed 0 "${O[@]}" \
    --set training.iterations=60000 --set logging.snapshot_every=500
  for s in 1 2; do
    train cls_omni5_anil_s$s $C/omniglot_5w1s_anil.yaml --seed $s "${O[@]}" \
      --set training.iterations=1000 --set logging.snapshot_every=250
  done
  # Table 5: training regimes, all read out with NIL (random features: the untrained snapshot)
  for r in multiclass multitask niltrain; do
    train cls_omni5_${r}_s0 $C/omniglot_5w1s_$r.yaml --seed 0 "${O[@]}" \
      --set training.iterations=1000 --set logging.snapshot_every=250
  done
  scripts/tables.sh omniglot $RUNS
  scripts/tables.sh trends $RUNS  # accuracy of the snapshots (random features: the untrained one)
  # Figure 2 / 3 and Table 3: representational similarity
  metarl analyze $RUNS/cls_omni20_maml_s0 "${O[@]}" --tasks 8 --out results/analysis/omni20_maml_s0
  metarl analyze $RUNS/cls_omni5_maml_s0_5000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_5000
  metarl analyze $RUNS/cls_omni5_maml_s0_5000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_5000
  metarl analyze $RUNS/cls_omni5_maml_s0_5000 "${O[@]}" --tasks 8 --inner-steps 1 \
    --out results/analysis/omni5_maml_s0_5000_1step
  metarl analyze $RUNS/cls_omni5_maml_s0_5000 "${O[@]}" --tasks 8 --conv mean \
    --out results/analysis/omni5_maml_s0_5000_convmean
  metarl analyze $RUNS/cls_omni5_maml_s0_10000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_10000
  metarl analyze $RUNS/cls_omni5_maml_s0_10000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_10000
  metarl analyze $RUNS/cls_omni5_maml_s0_20000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_20000
  metarl analyze $RUNS/cls_omni5_maml_s0_20000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_20000
  metarl analyze $RUNS/cls_omni5_maml_s0_30000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_30000
  metarl analyze $RUNS/cls_omni5_maml_s0_30000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_30000
  metarl analyze $RUNS/cls_omni5_maml_s0_45000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_45000
  metarl analyze $RUNS/cls_omni5_maml_s0_45000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_45000
  metarl analyze $RUNS/cls_omni5_maml_s0_60000 "${O[@]}" --tasks 8 --checkpoints --out results/analysis/omni5_maml_s0_60000
  metarl analyze $RUNS/cls_omni5_maml_s0_60000 "${O[@]}" --tasks 8 --out results/analysis/omni5_maml_s0_60000
  metarl analyze $RUNS/cls_omni5_maml_s0 $RUNS/cls_omni5_maml_s1 "${O[@]}" --tasks 8 --out results/analysis/maml_maml
  metarl analyze $RUNS/cls_omni5_anil_s1 $RUNS/cls_omni5_anil_s2 "${O[@]}" --tasks 8 --out results/analysis/anil_anil
  metarl analyze $RUNS/cls_omni5_anil_s1 $RUNS/cls_omni5_maml_s1 "${O[@]}" --tasks 8 --out results/analysis/anil_maml
fi
