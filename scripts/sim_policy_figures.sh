#!/usr/bin/env bash
# The sim policy's figures (issue 15, docs/training.md): closed and open loop, reach and pick,
# on the training rig and on a rig moved by 3 cm and 2 deg per camera (calibration known),
# one draw per plan, on start states of a collection seed that no model was trained or tuned on.
#
#   scripts/sim_policy_figures.sh MODEL SEED OUT [EPISODES]
#
# Every run is real time (about 8 min for 50 reach episodes, 10 for pick on 2 cores); run
# nothing else meanwhile, since plan latency is part of what a closed loop is judged on.
set -euo pipefail
model=${1:?model (checkpoint or artifact)}; seed=${2:?collection seed}; out=${3:?output dir}
episodes=${4:-50}
aimg=${AIMG:-.venv/bin/aimg}
mkdir -p "$out"
"$aimg" sim rig --out "$out/moved-rig.yaml" --move-cm 3 --turn-deg 2 --seed 1 >/dev/null
# most telling first: closed loop on the training rig, then open loop, then the moved rig
for run in reach:closed:standard pick:closed:standard reach:open:standard pick:open:standard \
           reach:closed:moved pick:closed:moved reach:open:moved pick:open:moved; do
  IFS=: read -r task loop rig <<<"$run"
  args=()
  [[ $loop == open ]] && args+=(--open-loop)
  [[ $rig == moved ]] && args+=(--calibration "$out/moved-rig.yaml")
  report="$out/$task-$loop-$rig.json"
  [[ -s $report ]] && continue  # re-running continues where it stopped
  echo "== $task, $loop loop, $rig rig -> $report" >&2
  "$aimg" run --sim --task "$task" --episodes "$episodes" --seed "$seed" --model "$model" \
    "${args[@]}" --out "$report" >/dev/null
done
"${PYTHON:-.venv/bin/python}" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| task | loop | rig | success | within 3 cm | median final error | plan p50 | out of limits |")
print("|---|---|---|---|---|---|---|---|")
for rig in ("standard", "moved"):
    for task in ("reach", "pick"):
        for loop in ("closed", "open"):
            path = out / f"{task}-{loop}-{rig}.json"
            if not path.is_file():
                print(f"| {task} | {loop} | {rig} | not run | | | | |")
                continue
            r = json.loads(path.read_text())
            n = len(r["per_episode"])
            won = sum(bool(e["success"]) for e in r["per_episode"])
            # the hover point means something for reach only (a picked cube has moved)
            near = r.get("within_3cm_of_hover_rate") if task == "reach" else None
            err = r.get("final_hover_error_median_m") if task == "reach" else None
            print(f"| {task} | {loop} | {rig} | {won}/{n} ({won / n:.0%}) | "
                  f"{'' if near is None else f'{near:.0%}'} | "
                  f"{'' if err is None else f'{err * 100:.1f} cm'} | "
                  f"{r['plan_latency_p50_s']:.2f} s | {r['out_of_limit_commands']} |")
PY
