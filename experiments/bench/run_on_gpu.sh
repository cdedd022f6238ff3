#!/usr/bin/env bash
# The GPU measurements of experiments/bench, in parts that each fit a 10-minute call on a lent machine.
# Logs and JSON go to OUTDIR; record them with
#   python -m experiments.bench.attention --record-from-json OUTDIR/attention_*.json
# (and paste the printed tables of lm_mfu / generate into experiments/bench/RESULTS.md).
set -uo pipefail
usage="usage: bash experiments/bench/run_on_gpu.sh check|attention-4k|attention-rest|mfu|generate [OUTDIR]
  check           the Pallas kernel tests compiled for the GPU, and the attention dispatch tests
  attention-4k    flash/decode attention against cuDNN and XLA at S=4096
  attention-rest  the same at S=512..16384 (no decode)
  mfu             Qwen2-0.5B-shape train step MFU, 4 x 4096 tokens
  generate        ~100M Qwen2 generation at batch 1, 8 and 64
OUTDIR defaults to runs/bench."
if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "$usage" >&2; exit 2; fi
part=$1
case $part in
  check|attention-4k|attention-rest|mfu|generate) ;;
  *) echo "unknown part '$part'" >&2; echo "$usage" >&2; exit 2 ;;
esac
out=$(mkdir -p "${2:-runs/bench}" && cd "${2:-runs/bench}" && pwd) || exit 2
cd "$(dirname "$0")/../.."  # python -m experiments.bench.* and the test paths resolve from the repository root
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
case $part in
  check)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $py -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
    $py -m pytest -q -p no:cacheprovider tests/pallas_kernels/test_flash_attention.py \
      tests/pallas_kernels/test_decode_attention.py tests/nn/test_attention.py tests/nn/test_attention_dispatch.py \
      -k "not tpu" 2>&1 | tee "$out/gpu_tests.log" ;;
  attention-4k)
    $py -m experiments.bench.attention --seq-lens 4096 --out "$out/attention_4k.json" --no-results-md ;;
  attention-rest)
    $py -m experiments.bench.attention --seq-lens 512,1024,2048,8192,16384 --skip-decode \
      --out "$out/attention_rest.json" --no-results-md ;;
  mfu)
    $py -m experiments.bench.lm_mfu --batch 4 --seq 4096 --json "$out/lm_mfu.json" 2>&1 | tee "$out/lm_mfu.log" ;;
  generate)
    $py -m experiments.bench.generate --batch 1 8 64 --json "$out/generate.json" 2>&1 | tee "$out/generate.log" ;;
esac
