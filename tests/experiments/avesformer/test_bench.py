"""experiments/bench/avs_fps.py runs both models with 2 timed iterations and reports consistent numbers."""
from __future__ import annotations

import json

from experiments.bench import avs_fps


def test_fps_bench_runs_tiny(tmp_path, capsys):
  out = tmp_path / 'fps.json'
  results = avs_fps.main(['--tiny', '--iters', '2', '--warmup', '1', '--json', str(out)])
  assert json.loads(out.read_text())['results'] == json.loads(json.dumps(results))
  assert set(results) == set(avs_fps.DECODERS)
  for r in results.values():
    assert r['params'] > 0 and r['vggish_params'] > 0
    wo, wi = r['without VGGish'], r['with VGGish']
    assert wo['iters'] == wi['iters'] == 2 and wo['median_s'] > 0 and wi['median_s'] > 0
    assert 0 < wo['flops'] < wi['flops']  # VGGish adds work
    assert wo['paired_speedup'] > 0 and wi['paired_speedup'] > 0
  base = results['AVSegFormer-style']
  assert base['without VGGish']['paired_speedup'] == base['with VGGish']['paired_speedup'] == 1.0
  # The baseline's 300 -> 8 queries and dense attention stages differ from AVESFormer's PQG and ELF stages.
  assert results['AVESFormer']['params'] != results['AVSegFormer-style']['params']
  report = capsys.readouterr().out
  assert '| AVESFormer |' in report and '| AVSegFormer-style |' in report
