#!/usr/bin/env bash
# Chunked heads vs whole [tokens, K] logits (and, given a checkout of the official code, the official step), side
# by side in one run on this machine: Swin-T, 2 x 224 + 6 x 96 crops, K = 65,536, view + region loss, at batch 4
# and 16, fp32 and bf16 autocast, each configuration in its own process (a process's peak memory only grows).
# Prints one table; the JSON lines (with the per-part breakdown) go to $OUT/heads.jsonl.
#
# Usage: benchmarks/heads.sh [--official PATH_TO_ESVIT_CHECKOUT [--pydeps DIR]]   (about 15 minutes on 2 cores)
#        BATCHES="4" PRECISIONS="fp32" STEPS=1 benchmarks/heads.sh   (a shorter run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench}
PY=${PYTHON:-.venv/bin/python}
BATCHES=${BATCHES:-"4 16"}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
STEPS=${STEPS:-3}
official=()
while [ $# -gt 0 ]; do
  case $1 in
    --official) official+=(--official "$2"); shift 2 ;;
    --pydeps) official+=(--pydeps "$2"); shift 2 ;;
    *) echo "heads.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || PY=$(command -v python3)
mkdir -p "$OUT"
log="$OUT/heads.jsonl"
: > "$log.run"
for batch in $BATCHES; do
  for precision in $PRECISIONS; do
    for heads in "" --no-chunked-heads; do
      "$PY" -m esvit bench --out "$OUT" train --batch "$batch" --precision "$precision" --steps "$STEPS" --breakdown \
        $heads | tail -1 | tee -a "$log.run" > /dev/null
    done
    if [ ${#official[@]} -gt 0 ] && [ "$batch" = 4 ]; then
      "$PY" benchmarks/official_step.py "${official[@]}" --reuse-memory --batch "$batch" --precision "$precision" \
        --steps "$STEPS" 2> /dev/null | tail -1 | tee -a "$log.run" > /dev/null
    fi
  done
done
cat "$log.run" >> "$log"
"$PY" - "$log.run" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
key = lambda r: (r["batch"], r["precision"])
print(f"{'batch':>5} {'prec':>5} {'path':<14} {'img/s':>7} {'step GB':>8} {'peak RSS GB':>11}   vs whole logits (speed, step memory)"
      "   vs official")
for r in rows:
    path = "official" if r.get("impl") == "official" else ("chunked heads" if r["chunked_heads"] else "whole logits")
    base = next((b for b in rows if key(b) == key(r) and b.get("chunked_heads") is False), None)
    off = next((b for b in rows if key(b) == key(r) and b.get("impl") == "official"), None)
    vs = f"{r['img_s'] / base['img_s']:.2f}x, {r['step_peak_gb'] / base['step_peak_gb']:.2f}x" if base else ""
    vo = f"{r['img_s'] / off['img_s']:.2f}x, {r['step_peak_gb'] / off['step_peak_gb']:.2f}x" if off else ""
    print(f"{r['batch']:>5} {r['precision']:>5} {path:<14} {r['img_s']:>7.3f} {r['step_peak_gb']:>8.2f} "
          f"{r['peak_rss_gb']:>11.2f}   {vs:<35}   {vo}")
for r in rows:
    if "parts_s" in r:
        path = "chunked heads" if r["chunked_heads"] else "whole logits"
        print(f"parts (s), batch {r['batch']} {r['precision']} {path}: " + ", ".join(f"{k} {v}" for k, v in r["parts_s"].items()))
EOF
rm -f "$log.run"
