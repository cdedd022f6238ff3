#!/usr/bin/env bash
# The GPU measurements of experiments/bench, in parts that each fit a 10-minute call on a lent machine.
#   bash experiments/bench/run_on_gpu.sh check|attention-4k|attention-rest|mfu|generate OUTDIR
# Logs and JSON go to OUTDIR; record them here with
#   python experiments/bench/attention.py --record-from-json OUTDIR/attention_*.json
# (and paste the printed tables of lm_mfu.py / generate.py into RESULTS.md).
set -uo pipefail
part=$1; out=${2:-runs/bench}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
case $part in
  check)  # The kernel tests compiled for the GPU (not interpreted), and the attention dispatch tests.
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $py -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
    $py -m pytest -q -p no:cacheprovider tests/pallas_kernels/test_flash_attention.py \
      tests/pallas_kernels/test_decode_attention.py tests/nn/test_attention.py tests/nn/test_attention_dispatch.py \
      -k "not tpu" 2>&1 | tee "$out/gpu_tests.log" ;;
  attention-4k)
    $py experiments/bench/attention.py --seq-lens 4096 --out "$out/attention_4k.json" --no-results-md ;;
  attention-rest)
    $py experiments/bench/attention.py --seq-lens 512,1024,2048,8192,16384 --skip-decode \
      --out "$out/attention_rest.json" --no-results-md ;;
  mfu)
    $py experiments/bench/lm_mfu.py --batch 4 --seq 4096 --json "$out/lm_mfu.json" 2>&1 | tee "$out/lm_mfu.log" ;;
  generate)
    $py experiments/bench/generate.py --batch 1 8 64 --json "$out/generate.json" 2>&1 | tee "$out/generate.log" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
