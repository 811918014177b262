#!/usr/bin/env bash
# The prepared GPU benchmark: on a machine with one NVIDIA GPU and this repo (after `make install`; it
# installs nothing and needs no internet), measure in one run:
#   1. the bf16 matmul peak of the GPU (8192^3 products),
#   2. the EsViT training step of Swin-T/W7 and Swin-B/W7 with the paper's crops (2 x 224 + 8 x 96, K = 65,536,
#      view + region loss, bf16 autocast) at the largest power-of-two batch that fits, with the chunked heads
#      (the default) and with whole [tokens, K] logits (--no-chunked-heads): images/s, TFLOP/s, MFU (= achieved /
#      the peak of step 1), the step's peak memory and where its time goes; then Swin-T's step with
#      deterministic kernels (run.deterministic), for their cost,
#   3. inference images/s of Swin-T/S/B (batch 128, 224 px, as the paper's Table 1) and of ViL-T, CvT-T, PvT-T
#      (the paper's Table 4 architectures) in fp32 and bf16,
#   4. the fast multi-crop loader on this machine's CPU cores (are the GPUs going to wait for input?),
#   5. the transfer probe's lambda search + refit on the GPU vs scikit-learn on 8 CPU threads (the goal:
#      >= 10x at equal accuracy).
# JSON lines go to results/bench/*.jsonl (or $OUT), a summary to stdout.
#
# Usage: benchmarks/gpu.sh            (on a GPU machine)
#        ESVIT_BENCH_CPU=1 benchmarks/gpu.sh   (no GPU: the same steps at toy sizes on the CPU; what the tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench}
PY=${PYTHON:-.venv/bin/python}

die() { echo "gpu.sh: $1" >&2; exit "${2:-2}"; }
[ -x "$PY" ] || PY=$(command -v python3 || true)
"$PY" -c "import esvit, torch, timm" 2>/dev/null ||
  die "the repo's environment is missing: run 'make install' first (this script installs nothing)"

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda
  gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  echo "gpu.sh: $gpu"
  archs=(swin_tiny_w7 swin_base_w7)
  train=(--device cuda --precision bf16 --batch auto --max-batch 512 --locals 8
         --global-size 224 --local-size 96 --steps 10 --threads 8 --breakdown)
  infer=(--archs swin_tiny_w7,swin_small_w7,swin_base_w7,vil_tiny,cvt_tiny,pvt_tiny --device cuda --batch 128 --steps 10)
  loader=(--workers "$(nproc)" --batches 20 --batch 32 --repeats 1)
  probe=(--device cuda --threads 8)
elif [ "${ESVIT_BENCH_CPU:-0}" = 1 ]; then
  device=cpu
  echo "gpu.sh: no CUDA device; ESVIT_BENCH_CPU=1: the same steps at toy sizes on the CPU (not a measurement)"
  archs=(swin_pico)
  train=(--device cpu --precision bf16 --batch auto --max-batch 2 --locals 2 --global-size 64
         --local-size 32 --out-dim 1024 --steps 1 --threads 2 --breakdown)
  infer=(--archs swin_pico,vil_test,cvt_test,pvt_test --device cpu --batch 4 --size 64 --steps 1)
  loader=(--images 40 --batches 1 --batch 4 --locals 2 --global-size 64 --local-size 32 --repeats 1)
  probe=(--device cpu --n 2000 --n-test 500 --dim 32 --classes 5)
else
  die "no CUDA device is visible (torch.cuda.is_available() is False; nvidia-smi: $(command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | head -1 || echo 'not installed')). Run it on a GPU machine, or ESVIT_BENCH_CPU=1 for a CPU dry run" 3
fi

mkdir -p "$OUT"
start=$(date +%s)
run() { "$PY" -m esvit bench --out "$OUT" "$@" | tail -1; }
steps=()
for arch in "${archs[@]}"; do
  for heads in "" --no-chunked-heads; do
    steps+=("$(run train --arch "$arch" "${train[@]}" $heads)")
  done
done
t=${steps[0]}  # Swin-T, chunked heads: the default
batch=$("$PY" -c 'import json, sys; print(json.loads(sys.argv[1])["batch"])' "$t")
td=$(run train --arch "${archs[0]}" "${train[@]}" --batch "$batch" --deterministic)  # with deterministic kernels
i32=$(run infer "${infer[@]}" --precision fp32)
i16=$(run infer "${infer[@]}" --precision bf16)
ld=$(run loader "${loader[@]}")
pr=$(run probe "${probe[@]}")

"$PY" - "$i32" "$i16" "$ld" "$pr" "$device" "$td" "${steps[@]}" <<'EOF'
import json, sys
i32, i16, ld, pr = (json.loads(a) for a in sys.argv[1:5])
device = sys.argv[5]
td = json.loads(sys.argv[6])
steps = [json.loads(a) for a in sys.argv[7:]]
t = steps[0]
print(f"\n== EsViT on {t['machine']['device']} ({device}) ==")
print(f"training step {t['crops']}, K={t['out_dim']}, {t['precision']}, against a measured "
      f"{t['matmul_peak_gflop_s'] / 1e3:.1f} TFLOP/s {t['precision']} matmul peak (MFU goal on an H100: >= 45 %):")
for s in steps:
    heads = "chunked heads" if s["chunked_heads"] else "whole logits "
    print(f"  {s['arch']:<14} {heads}: largest batch {s['batch']:>4}, {s['img_s']:8.1f} img/s, "
          f"{s['gflop_s'] / 1e3:6.1f} TFLOP/s, MFU {100 * s['fraction_of_peak']:5.1f} %, step peak memory "
          f"{s['step_peak_gb']} GB" + (f" (device peak {s['peak_gpu_gb']} GB)" if s.get("peak_gpu_gb") else ""))
    print("      where the time goes (s): " + ", ".join(f"{k} {v}" for k, v in s.get("parts_s", {}).items()))
print(f"the same step with deterministic kernels (run.deterministic): {td['img_s']:.1f} img/s = "
      f"{td['img_s'] / t['img_s']:.2f}x the default")
for rec in (i32, i16):
    print(f"inference batch {rec['batch']}, {rec['size']} px, {rec['precision']}: "
          + ", ".join(f"{a} {v:.0f} img/s" for a, v in rec["img_s"].items()))
print(f"loader ({ld['per']}): fast {ld['fast_img_s']:.0f} img/s vs reference {ld['reference_img_s']:.0f} img/s "
      f"({ld['ratio']:.2f}x); one training step consumes {t['img_s']:.0f} img/s")
print(f"probe ({pr['n']} x {pr['dim']}, {pr['classes']} classes) on {pr['device']}: {pr['ours_s']} s vs scikit-learn "
      f"{pr['sklearn_s']} s on {pr['threads']} threads = {pr['speedup']}x (goal >= 10x), test accuracy "
      f"{pr['ours_acc']} vs {pr['sklearn_acc']}")
EOF
echo "gpu.sh: done in $(( $(date +%s) - start ))s; JSON lines in $OUT/{train,infer,loader,probe}.jsonl"
