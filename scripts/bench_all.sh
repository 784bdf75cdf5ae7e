#!/usr/bin/env bash
# Every benchmark figure of docs/performance.md, saved as JSON under $OUT (default
# /tmp/avrl-bench/results), then printed as markdown tables. Footage is made on first use
# under $WORK/footage (720p/1080p H.264, HEVC, MJPEG at 25 fps, GOP 50, B-frames; low-res long
# recordings for the memory figures): about 10-15 CPU-minutes on 2 cores, reused afterwards.
#   scripts/bench_all.sh            # all of it (~25 min on 2 cores)
#   DAY=1 scripts/bench_all.sh      # also the 24-hour recording (memory stays flat)
set -euo pipefail
cd "$(dirname "$0")/.."
AVRL=.venv/bin/avrl
WORK=${WORK:-/tmp/avrl-bench}
OUT=${OUT:-$WORK/results}
RUNS=${RUNS:-3}
mkdir -p "$OUT"
uptime
$AVRL bench decode --runs "$RUNS" --threads 1 --work "$WORK" --save "$OUT/decode.json"
$AVRL bench decode "$($AVRL bench footage h264-720p 60 --work "$WORK")" --runs "$RUNS" \
  --threads 2 --work "$WORK" --save "$OUT/decode-2threads.json"
$AVRL bench model --presets tiny,small,paper --batch-sizes 1,8 --runs "$RUNS" \
  --save "$OUT/model.json"
$AVRL bench model --presets small --fusions concat,concat_ln,concat_um,add,lf \
  --batch-sizes 8 --variants fp32 --runs "$RUNS" --save "$OUT/model-fusions.json"
$AVRL bench load --presets tiny,small,paper --runs "$RUNS" --work "$WORK" --save "$OUT/load.json"
$AVRL bench scan --workers 1,2 --segment 20 --runs "$RUNS" --work "$WORK" --save "$OUT/scan-scaling.json"
$AVRL bench baseline --segment 20 --runs "$RUNS" --work "$WORK" --save "$OUT/baseline.json"
$AVRL bench scan --memory --preset tiny --workers 2 --runs "$RUNS" --work "$WORK" \
  --save "$OUT/scan-memory.json"
if [[ "${DAY:-0}" == 1 ]]; then
  $AVRL bench scan "$($AVRL bench footage h264-32p 86400 --work "$WORK")" --preset tiny \
    --workers 2 --runs 1 --segment 600 --work "$WORK" --save "$OUT/scan-24h.json"
fi
uptime
$AVRL bench show "$OUT"/*.json
