"""experiments/bench/object_images.py --quick on the CPU backend: the encoder's stage timers add up to the encoder's
time, the omages and decoded meshes are non-empty, and a DiT batch left out of --run-batches is extrapolated."""
from __future__ import annotations

import json

import numpy as np

from experiments.bench import object_images
from experiments.object_images import omage


def test_quick_benchmark_outputs_are_sane(tmp_path, capsys):
  out = tmp_path / 'bench.json'
  # Only batch 1 runs; batch 2 takes batch 1's time per object.
  results = object_images.main(['--quick', '--run-batches', '1', '--json', str(out)])
  assert json.loads(out.read_text())['encode'] == results['encode']
  enc, dec, dit = results['encode'], results['decode'], results['dit']
  assert enc['objects'] == object_images.QUICK.objects and enc['mean_faces'] > 0
  assert 0 < enc['occupied_fraction'] < 1
  stages = enc['stages']
  assert set(stages) == {'load', *object_images.STAGES} and min(stages.values()) >= 0
  # The stages are disjoint parts of the passes (means over all passes), so they cannot take longer than a mean pass.
  assert stages['raster'] > 0 and sum(stages.values()) <= np.mean(enc['pass_seconds']) / enc['objects']
  assert np.isclose(enc['speedup_vs_paper'], object_images.PAPER_SECONDS_PER_GLB * enc['objects_per_s'])
  assert dec['min_faces'] > 0 and dec['seconds_per_object'] > 0
  assert dit['1']['measured'] and dit['1']['finite'] and dit['1']['shape'] == [1, 8, 8, 4]
  assert np.isclose(dit['1']['sampling_s'], dit['1']['step_s'] * object_images.QUICK.steps)
  assert not dit['2']['measured'] and dit['2']['extrapolated_from'] == 1
  assert np.isclose(dit['2']['seconds_per_object'], dit['1']['seconds_per_object'])
  report = capsys.readouterr().out
  assert report.count(object_images.NOT_MEASURED) == len(object_images.QUICK.batches)
  assert '| 3 primitives |' in report and '| raster |' in report


def test_stage_timers_restore_the_encoder():
  before = {name: getattr(omage, name) for name in object_images.STAGES.values()}
  totals = dict.fromkeys(object_images.STAGES, 0.0)
  with object_images.stage_timers(totals):
    assert all(getattr(omage, name) is not before[name] for name in before)
  assert all(getattr(omage, name) is before[name] for name in before)
