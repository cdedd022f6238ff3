"""AVESFormer training and evaluation: the official protocol (batch 4, padded rows dropped), the AVSS frame-mask
option, and the smoke run (it learns, and it uses the audio)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from configs import avesformer
from experiments.avesformer import evaluate, experiment, metrics
from experiments.avesformer.synthetic import SyntheticSource
from mmjax.train import train_and_evaluate

# The smoke's bounds (variant=smoke: 32 px, 200 steps, host init, config seed 0). Measured with this test's settings
# (8 virtual CPU devices, highest matmul precision, tests/xla_flags.py's flags with the step at level 1, evaluated
# once by evaluate_program): val mIoU 0.743 vs 0.421 with shuffled audio (at level 0 with XLA's fusion emitters,
# 0.722 vs 0.509: the trajectory depends on the program's rounding). Val mIoU must beat MIN_MIOU, and beat the same
# model with shuffled audio (ShuffledAudio, eval.shuffle_seed 0) by MARGIN: 0.14 and 0.22 of slack for other CPUs'
# XLA programs.
MIN_MIOU = 0.6
MARGIN = 0.1


class _FrameLogits:
  """A stand-in model: the logits are the frames' first `classes` channels (known without running a network)."""

  def __init__(self, classes: int = 1):
    self.classes = classes

  def forward(self, params, frames, audio):
    del params, audio
    return frames[..., :self.classes], None


def test_evaluation_is_the_official_protocol():
  source = SyntheticSource(6, seed=3, size=32)  # batches of 4 and 2 videos, the pipeline pads the second
  result = evaluate.evaluate_source(_FrameLogits(), None, source)
  logits = np.stack([source[i]['frames'][..., 0] for i in range(6)])
  masks = np.stack([source[i]['masks'] for i in range(6)])
  assert result == metrics.binary_metrics(logits, masks, batch_size=4)
  assert result['batches'] == 2


class _Padded:
  """Two AVSS-style videos of 4 frames, the last 2 padded (frame_flags 0, all-background masks); the frames are
  one-hot logits: real frames predict their masks exactly, padded ones predict class 2 everywhere."""

  def __len__(self):
    return 2

  def __getitem__(self, i):
    masks = np.zeros((4, 8, 8), np.int32)
    masks[:2, 4:] = 1
    predicted = masks.copy()
    predicted[2:] = 2
    return {'frames': np.eye(3, dtype=np.float32)[predicted], 'audio': np.zeros((4, 96, 64, 1), np.float32),
            'masks': masks, 'frame_flags': np.array([1, 1, 0, 0], np.float32),
            'mask_flags': np.array([1, 1, 0, 0], np.float32), 'index': np.int32(i)}


def test_avss_padded_frames_count_as_background_unless_frame_mask():
  official = evaluate.evaluate_source(_FrameLogits(3), None, _Padded())
  masked = evaluate.evaluate_source(_FrameLogits(3), None, _Padded(), frame_mask=True)
  assert (official['classes'], masked['classes']) == (3, 2)  # class 2 is only predicted on padded frames
  assert np.isclose(masked['miou'], 2 / 3) and masked['miou_no_background'] == official['miou_no_background'] == 1 / 2
  assert official['miou'] == (0.5 + 1) / 3  # background: 1 on the real frames, 0 on the padded ones


def test_smoke_learns_and_uses_the_audio(tmp_path):
  config = avesformer.get_config('variant=smoke')
  config.progress_bar = False
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  # 200 steps: LLVM's level-1 optimisation compiles the step in ~15 s more than the tests' level 0 and halves each
  # step's time (0.41 -> 0.20 s on one core of a 2-core AMD EPYC, jax 0.10.2, with tests/xla_flags.py's emitters).
  config.xla_options = {'xla_backend_optimization_level': 1}
  workdir = str(tmp_path / 'run')
  # Evaluated once, by --mode evaluate (the official protocol, the shuffled-audio control, summary.json, overlays):
  # the trainer's end-of-run evaluators (the same evaluate_source calls, test_augment.py checks what they read) are
  # left out, which saves a compile of the forward and a second pass.
  exp = dataclasses.replace(experiment.make_experiment(config), evaluators={})
  assert train_and_evaluate(config, workdir, exp)['step'] == config.total_steps
  summary = evaluate.evaluate_program(config, workdir)
  miou, shuffled = summary['metrics']['miou'], summary['shuffled_audio']['miou']
  assert miou > MIN_MIOU, summary
  assert miou > shuffled + MARGIN, summary
  assert summary['step'] == config.total_steps and summary['videos'] == config.data.synthetic_eval
  written = json.loads((tmp_path / 'run' / 'evaluate' / 'summary.json').read_text())
  assert written['table'][1]['miou'] == 79.9 and written['shuffled_audio'] == summary['shuffled_audio']
  assert len(list((tmp_path / 'run' / 'evaluate' / 'overlays').glob('*.png'))) == config.eval.overlays
