"""experiments/bench/attention.py without a GPU: it refuses to run and writes nothing."""
from __future__ import annotations

from experiments.bench import attention as bench


def test_refuses_to_run_without_a_gpu(tmp_path):
  out = tmp_path / "attention.json"
  results_md = tmp_path / "RESULTS.md"
  assert bench.main(["--out", str(out), "--results-md", str(results_md)]) == 2
  assert not out.exists() and not results_md.exists()


def test_markdown_table_reports_errors_and_ratios():
  env = {"date_utc": "2026-01-01 00:00 UTC", "device_kind": "GPU", "jax": "x", "jaxlib": "x"}
  base = {"batch": 4, "seq_len": 4096, "heads": 16, "head_dim": 128, "causal": True, "mode": "fwd"}
  rows = [{**base, "impl": "cudnn", "ms": 2.0, "tflops": 300.0, "compile_s": 1.0},
          {**base, "impl": "mmjax_pallas", "ms": 2.5, "tflops": 240.0, "compile_s": 3.0},
          {**base, "impl": "xla", "error": "OOM"}]
  bench._add_ratios(rows, "tflops")
  text = bench.results_markdown(env, rows, [], "cmd")
  assert "| mmjax_pallas | 2.500 | 240.0 | 0.80 |" in text
  assert "| xla |  |  |  |  | OOM |" in text


def test_saved_gpu_runs_are_recorded_as_markdown(tmp_path):
  """--record-from-json turns a run fetched back from a GPU machine into the RESULTS.md section."""
  import json
  env = {"date_utc": "2026-01-01 00:00 UTC", "device_kind": "H100", "jax": "x", "jaxlib": "x"}
  row = {"batch": 1, "seq_len": 512, "heads": 2, "head_dim": 64, "causal": False, "mode": "fwd",
         "impl": "mmjax_pallas", "ms": 1.0, "tflops": 9.0, "compile_s": 0.5}
  saved = tmp_path / "run.json"
  saved.write_text(json.dumps({"environment": env, "command": "cmd", "flash": [row], "decode": []}))
  results_md = tmp_path / "RESULTS.md"
  bench.record_from_json([str(saved)], str(results_md))
  text = results_md.read_text()
  assert "## Attention kernels: 2026-01-01 00:00 UTC, H100" in text and "| mmjax_pallas | 1.000 | 9.0 |" in text


def test_gpu_only_benchmarks_refuse_on_cpu(monkeypatch):
  import sys

  from experiments.bench import lm_mfu
  monkeypatch.setattr(sys, "argv", ["lm_mfu.py", "--no-torch"])
  assert lm_mfu.main() == 2
