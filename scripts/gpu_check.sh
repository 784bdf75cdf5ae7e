#!/usr/bin/env bash
# The GPU paths on a machine with a CUDA GPU, in one run of a few minutes, then a table.
#
#   bash scripts/gpu_check.sh [WORKDIR]        (default /tmp/avrl-gpu-check)
#
# 1. a 1-GPU training run (Ray Train, NCCL process group, CUDA autocast in the loop)
# 2. a full scan whose inference actors take num_gpus (the pipeline does so when the
#    cluster has GPUs)
# 3. the screen calibrated, then a cascade scan of the same footage (its full-frame stage
#    decodes on the CPU: the cascade has no GPU decoding)
# CI never runs it; it needs torch with CUDA and an NVIDIA driver.
set -euo pipefail
WORK=${1:-/tmp/avrl-gpu-check}
AVRL=${AVRL:-avrl}
mkdir -p "$WORK"
python - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device; run it on a GPU machine")
print(f"gpu: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
EOF

declare -a ROWS
step() {  # step NAME COMMAND...: run, time, keep the last line of its output
  local name=$1; shift
  local t0 t1 line
  t0=$(date +%s.%N)
  "$@" > "$WORK/$name.log" 2>&1 || { echo "gpu_check: $name failed, see $WORK/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  line=$(tail -n 1 "$WORK/$name.log" | cut -c1-90)
  ROWS+=("$(printf '| %-14s | %7.1f | %s |' "$name" "$(echo "$t1 - $t0" | bc)" "$line")")
}

step synth "$AVRL" synth "$WORK/data" --preset ci --seed 0
step prepare "$AVRL" prepare "$WORK/data/manifest.parquet" --out "$WORK/prepared" --preset tiny
step train-1gpu "$AVRL" train "$WORK/prepared" --out "$WORK/run" --preset tiny --workers 1 \
  --gpu --epochs 3
step scan-gpu "$AVRL" scan "$WORK/data/recordings" --model "$WORK/run/model.avrl" \
  --out "$WORK/scan-full" --rescan
step calibrate "$AVRL" calibrate "$WORK/run/model.avrl" "$WORK/data/ground_truth.parquet" \
  --out "$WORK/run/model-screen.avrl"
step scan-cascade "$AVRL" scan "$WORK/data/recordings" --model "$WORK/run/model-screen.avrl" \
  --out "$WORK/scan-cascade" --cascade --rescan

python - "$WORK" <<'EOF'
import glob, json, sys
work = sys.argv[1]
for name in ("scan-full", "scan-cascade"):
    m = json.load(open(sorted(glob.glob(f"{work}/{name}/_scans/*.json"))[-1]))
    print(f"{name}: {m['footage_s']:.0f} s footage in {m['wall_s']:.1f} s, infer nodes "
          f"{m['infer_nodes']}, cascade {m.get('cascade', {}).get('inferred_share', '-')}")
EOF
echo "| step           |  wall s | last line of output |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
