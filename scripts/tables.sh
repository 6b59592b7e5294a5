#!/usr/bin/env bash
# Every table in the README, recomputed from run directories (no training); each command's
# output is kept as results/tables/<name>.txt, the command on its first line.
# RUNS defaults to the committed checkpoints in results/runs/. `trends` evaluates training
# snapshots, which results/runs/ leaves out for size: give it the run directories that
# scripts/paper_runs.sh trains (`scripts/tables.sh trends runs`).
# Usage: scripts/tables.sh [nav|halfcheetah|rllab|v1|h200|omniglot|trends|all] [RUNS]
# (rllab, v1, h200: only the HalfCheetah tables of Finn et al.'s rllab setting, of pytorch-maml-rl v1's, of the reference
# setting with 200-step episodes; halfcheetah includes all three)
# (METARL_DATA: the folder holding omniglot/, default ../shared/data)
set -euo pipefail
shopt -s nullglob  # a pattern that matches nothing is an error below, not a literal path
cd "$(dirname "$0")/.."  # every path here is relative to the repository root
what=${1:-all}
R=${2:-results/runs}
OUT=results/tables
DATA=${METARL_DATA:-../shared/data}
E=(--tasks 40 --inner-steps 1)  # RL: the paper's 40 test tasks, one inner step
O=(--data-root "$DATA")  # classification
mkdir -p $OUT

table() {  # table NAME COMMAND...: run it, print and keep its output (command first); a failure keeps the old file
  local name=$1; shift
  echo "== $name: $*"
  if ! { echo "\$ $*"; "$@"; } > "$OUT/$name.txt.tmp"; then
    rm -f "$OUT/$name.txt.tmp"
    echo "tables.sh: $name failed; $OUT/$name.txt is unchanged" >&2
    return 1
  fi
  mv "$OUT/$name.txt.tmp" "$OUT/$name.txt"
  cat "$OUT/$name.txt"
}
metarl() { .venv/bin/metarl "$@"; }
py() { .venv/bin/python "$@"; }
by_task() {  # by_task RUN ADAPT: per-task-group returns of one evaluation
  metarl evaluate "$1" "${E[@]}" --adapt "$2" --json | py scripts/by_task.py
}
steps3_tables() {  # steps3_tables RUN...: each run's return after 0-3 test-time steps (Finn et al.'s protocol) as RUN_3steps
  for run in "$@"; do table "$(basename $run)_3steps" metarl evaluate $run --tasks 40 --inner-steps 3; done
}
by_task_tables() {  # by_task_tables RUN...: by_task with each run's own adaptation, MAML's with head-only too
  for run in "$@"; do
    specs=(head) && [[ $run == *maml* ]] && specs=(full head)
    for a in "${specs[@]}"; do table "by_task_$(basename $run)_$a" by_task $run $a; done
  done
}

if [[ $what == nav || $what == all ]]; then
  table nav_table2 metarl summarize $R/nav_anil_s? $R/nav_maml_s? "${E[@]}"
  table nav_maml_head_vs_full metarl summarize $R/nav_maml_s? "${E[@]}" --adapt full --adapt head
  table nav_clip metarl summarize $R/nav_anil_s?_clip $R/nav_maml_s?_clip "${E[@]}"
  table nav_clip_maml_head metarl summarize $R/nav_maml_s?_clip "${E[@]}" --adapt head
  table nav_scale py scripts/nav_scale.py $R/nav_{anil,maml}_s?_clip $R/nav_{anil,maml}_s?
  table nav_stepw metarl summarize $R/nav_*_stepw "${E[@]}"
  table nav_fixedstd metarl summarize $R/nav_anil_s2_fixedstd "${E[@]}"
  # the kept run make run retrains, evaluated as make run evaluates it
  table nav_anil_s0_head_3steps metarl evaluate $R/nav_anil_s0 --tasks 40 --inner-steps 3 --adapt head
fi

if [[ $what == halfcheetah || $what == all ]]; then
  table hc_table2 metarl summarize $R/hc_{dir,vel}_{anil,maml}_s? "${E[@]}"
  table hc_maml_head_vs_full metarl summarize $R/hc_{dir,vel}_maml_s? "${E[@]}" --adapt full --adapt head
  steps3_tables $R/hc_dir_anil_s0
  # ablation: the log-std fixed in ANIL's inner loop (setups.md leaves it open), seed 0
  table hc_dir_anil_s0_fixedstd metarl evaluate $R/hc_dir_anil_s0_fixedstd "${E[@]}"
  # ablation: a 5x inner step (0.5) for ANIL's head, seed 0, evaluated with the step it trained with
  table hc_dir_anil_s0_lr05 metarl evaluate $R/hc_dir_anil_s0_lr05 "${E[@]}"
  # ablation: Finn et al.'s 100x100 ReLU policy, seed 0 (its 300-iteration reading is compared
  # with the default's snapshot at 300: hc_dir_anil_s0_iter300 under trends)
  table hc_dir_anil_s0_relu100 metarl evaluate $R/hc_dir_anil_s0_relu100 "${E[@]}"
  # the four seed-0 ANIL-Direction curves as numbers (post-adaptation training return by 50 iterations)
  table hc_dir_anil_s0_curves py scripts/window_means.py $R/hc_dir_anil_s0{,_fixedstd,_lr05,_relu100}
  # per task group: where head-only adaptation falls short
  by_task_tables $R/hc_{dir,vel}_{anil,maml}_s? $R/hc_dir_anil_s0_lr05
fi

if [[ $what == halfcheetah || $what == rllab || $what == all ]]; then
  # Finn et al.'s rllab setting (horizon 200, no frame skip, centre-of-mass velocity, 100x100 ReLU):
  # ANIL seeds 0-4 and MAML seeds 0-3
  table hc_dir_rllab metarl summarize $R/hc_dir_anil_rllab_s? $R/hc_dir_maml_rllab_s? "${E[@]}"
  # each seed's steps 0-3 and 95% intervals (step 1 repeats hc_dir_rllab's one-step reading); the _rllabenv
  # runs add rllab's observed centre of mass and reset noise (env.settings obs_position, reset_noise)
  steps3_tables $R/hc_dir_{anil,maml}_rllab_s? $R/hc_dir_anil_rllab_s?_rllabenv
  table hc_dir_maml_rllab metarl summarize $R/hc_dir_maml_rllab_s? "${E[@]}" --adapt full --adapt head
  table hc_dir_rllab_curves py scripts/window_means.py $R/hc_dir_{anil,maml}_rllab_s?
  for s in 2 1; do table hc_dir_anil_rllab_s${s}_clip10 metarl evaluate $R/hc_dir_anil_rllab_s${s}_clip10 "${E[@]}"; done
  table hc_dir_clip10_curves py scripts/window_means.py $R/hc_dir_anil_rllab_s{2,1}{,_clip10}
  # ANIL seeds 0, 1, 2 and 4 with rllab's observed centre of mass and reset noise too, beside the same seeds without
  table hc_dir_rllabenv metarl summarize $R/hc_dir_anil_rllab_s?_rllabenv "${E[@]}"
  table hc_dir_rllabenv_curves py scripts/window_means.py $R/hc_dir_anil_rllab_s{0,1,2,4}{,_rllabenv}
  by_task_tables $R/hc_dir_{anil,maml}_rllab_s? $R/hc_dir_anil_rllab_s?_rllabenv
  # torso pitch before and after one step: do stalled runs run on their backs? (they do not)
  table hc_dir_posture py scripts/posture.py $R/hc_dir_{anil,maml}_rllab_s? $R/hc_dir_anil_rllab_s{2,1}_clip10 \
    $R/hc_dir_{anil,maml}_s0
  # which layer the inner loop changes most, over every HalfCheetah MAML policy (reads metarl analyze's
  # JSON in results/analysis/, made by scripts/paper_runs.sh halfcheetah)
  A=results/analysis
  table rl_similarity_1step py scripts/layer_ranges.py $A/hc_{dir,vel}_maml_s? $A/hc_dir_maml_rllab_s? $A/hc_{dir,vel}_maml_v1_s?
  table rl_similarity_3steps py scripts/layer_ranges.py $A/hc_{dir,vel}_maml_s?_3steps $A/hc_dir_maml_rllab_s?_3steps \
    $A/hc_{dir,vel}_maml_v1_s?_3steps
fi

if [[ $what == halfcheetah || $what == v1 || $what == all ]]; then
  # pytorch-maml-rl's first release (frame skip 5, 200 steps, raw clipped control, 100x100 ReLU): Direction ANIL seeds 0-5,
  # MAML seeds 0-2, ANIL seed 0 with the post batch's baseline fitted on the pre batch (_prebase), ANIL seed 2 on to
  # 1,000 iterations (_1000); Velocity ANIL and MAML seeds 0-1
  v1=($R/hc_dir_{anil,maml}_v1_s? $R/hc_dir_anil_v1_s0_prebase)
  v1vel=($R/hc_vel_{anil,maml}_v1_s?)
  table hc_dir_v1 metarl summarize $R/hc_dir_anil_v1_s? "${E[@]}"
  table hc_dir_maml_v1 metarl summarize $R/hc_dir_maml_v1_s? "${E[@]}" --adapt full --adapt head
  table hc_dir_anil_v1_prebase metarl summarize $R/hc_dir_anil_v1_s0_prebase "${E[@]}"
  table hc_dir_anil_v1_s2_1000 metarl summarize $R/hc_dir_anil_v1_s2_1000 "${E[@]}"
  table hc_dir_anil_v1_s2_1000_curves py scripts/window_means.py $R/hc_dir_anil_v1_s2_1000
  table hc_dir_anil_v1_s2_1000_line_search py scripts/window_means.py $R/hc_dir_anil_v1_s2_1000 $R/hc_dir_anil_v1_s{1,4} \
    --key line_search_steps --width 100
  table hc_vel_v1 metarl summarize "${v1vel[@]}" "${E[@]}"
  table hc_vel_maml_v1 metarl summarize $R/hc_vel_maml_v1_s? "${E[@]}" --adapt full --adapt head
  steps3_tables "${v1[@]}" $R/hc_dir_anil_v1_s2_1000 "${v1vel[@]}"
  table hc_dir_v1_curves py scripts/window_means.py "${v1[@]}"
  table hc_vel_v1_curves py scripts/window_means.py "${v1vel[@]}"
  by_task_tables "${v1[@]}" "${v1vel[@]}"
fi

if [[ $what == halfcheetah || $what == h200 || $what == all ]]; then
  # the reference setting with 200-step episodes (--set env.horizon=200): ANIL-Direction seeds 0-3, MAML seeds 0-2
  h200=($R/hc_dir_anil_h200_s?)
  mh200=($R/hc_dir_maml_h200_s?)
  table hc_dir_anil_h200 metarl summarize "${h200[@]}" "${E[@]}"
  table hc_dir_maml_h200 metarl summarize "${mh200[@]}" "${E[@]}" --adapt full --adapt head
  steps3_tables "${h200[@]}" "${mh200[@]}"
  table hc_dir_h200_curves py scripts/window_means.py "${h200[@]}" "${mh200[@]}" $R/hc_dir_anil_s{0,1}
  by_task_tables "${h200[@]}" "${mh200[@]}"
fi

if [[ $what == omniglot || $what == all ]]; then
  table omni20_anil metarl summarize $R/cls_omni20_anil_s0 "${O[@]}" --adapt head --adapt nil
  table omni20_maml_freezing metarl summarize $R/cls_omni20_maml_s0 "${O[@]}" --adapt full \
    --adapt freeze:1 --adapt freeze:2 --adapt freeze:3 --adapt freeze:4 --adapt none --adapt nil
  table omni5_maml_freezing metarl summarize $R/cls_omni5_maml_s0 "${O[@]}" --adapt full \
    --adapt freeze:1 --adapt freeze:2 --adapt freeze:3 --adapt freeze:4 --adapt none --adapt nil
  table omni5_anil_6000 metarl summarize $R/cls_omni5_anil_s0 "${O[@]}" --adapt head --adapt nil
  table omni5_maml_5000 metarl evaluate $R/cls_omni5_maml_s0_5000 "${O[@]}"
  table omni5_maml_10000 metarl evaluate $R/cls_omni5_maml_s0_10000 "${O[@]}"
  table omni5_maml_20000 metarl evaluate $R/cls_omni5_maml_s0_20000 "${O[@]}"
  table omni5_maml_30000 metarl evaluate $R/cls_omni5_maml_s0_30000 "${O[@]}"
  table omni5_maml_45000 metarl evaluate $R/cls_omni5_maml_s0_45000 "${O[@]}"
  table omni5_maml_60000 metarl evaluate $R/cls_omni5_maml_s0_60000 "${O[@]}"
  table omni5_regimes_nil metarl summarize $R/cls_omni5_maml_s{0,1} $R/cls_omni5_anil_s{1,2} \
    $R/cls_omni5_{multiclass,multitask,niltrain}_s0 "${O[@]}" --adapt nil
  table cca_bias py scripts/cca_bias.py
fi

if [[ $what == trends || ($what == all && -d $R/cls_omni5_anil_s0/snapshots) ]]; then
  snapshots() {  # snapshots RUN ADAPT: one evaluation per snapshot (the run directory must still hold them)
    local run=$R/$1 snaps=("$R/$1"/snapshots/iter_*.pt) result
    if [ ${#snaps[@]} -eq 0 ]; then echo "no snapshots in $run/snapshots (not kept in results/runs)" >&2; return 1; fi
    for snap in "${snaps[@]}"; do
      result=$(metarl evaluate "$run" "${O[@]}" --adapt "$2" --checkpoint "$snap" --json) || return 1
      echo "$(basename "$snap" .pt): $(echo "$result" |
        py -c 'import json,sys; r=json.load(sys.stdin); print("%.1f +- %.1f" % (100 * r["accuracy"], 100 * r["ci95"]))')"
    done
  }
  table omni20_anil_snapshots snapshots cls_omni20_anil_s0 head
  table omni5_anil_snapshots snapshots cls_omni5_anil_s0 head
  table omni5_random_features_nil metarl evaluate $R/cls_omni5_anil_s0 "${O[@]}" --adapt nil \
    --checkpoint $R/cls_omni5_anil_s0/snapshots/iter_000000.pt
  table hc_dir_anil_s0_iter300 metarl evaluate $R/hc_dir_anil_s0 "${E[@]}" \
    --checkpoint $R/hc_dir_anil_s0/snapshots/iter_000300.pt
  table hc_dir_anil_s0_relu100_iter300 metarl evaluate $R/hc_dir_anil_s0_relu100 "${E[@]}" \
    --checkpoint $R/hc_dir_anil_s0_relu100/snapshots/iter_000300.pt
  # the rllab ANIL seeds' initial policies and their snapshots at 50: does the start predict a stall?
  table hc_dir_anil_rllab_early_posture py scripts/posture.py \
    $R/hc_dir_anil_rllab_s{0,1,2,3}/snapshots/iter_000000.pt $R/hc_dir_anil_rllab_s{0,1,2,3}/snapshots/iter_000050.pt
fi
