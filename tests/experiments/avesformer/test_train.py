"""AVESFormer training and evaluation: the official protocol (batch 4, padded rows dropped), the AVSS frame-mask
option, and the smoke run (it learns, and it uses the audio)."""
from __future__ import annotations

import json

import numpy as np

from configs import avesformer
from experiments.avesformer import evaluate, metrics
from experiments.avesformer.synthetic import SyntheticSource
from mmjax.train import train_and_evaluate

# The smoke's bounds (config seed 0, 200 steps). Measured: val mIoU 0.599 vs 0.457 with shuffled audio (a script run)
# and 0.561 vs 0.476 (under pytest's 8 virtual devices). Val mIoU must beat MIN_MIOU, and beat the same model with
# shuffled audio (ShuffledAudio, eval.shuffle_seed 0) by MARGIN.
MIN_MIOU = 0.5
MARGIN = 0.05


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
  workdir = str(tmp_path / 'run')
  out = train_and_evaluate(config, workdir)['eval']
  assert out['val/miou'] > MIN_MIOU, out
  assert out['val/miou'] > out['val/shuffled_audio_miou'] + MARGIN, out
  summary = evaluate.evaluate_program(config, workdir)
  assert summary['metrics']['miou'] == out['val/miou'] and summary['step'] == config.total_steps
  written = json.loads((tmp_path / 'run' / 'evaluate' / 'summary.json').read_text())
  assert written['table'][1]['miou'] == 79.9 and written['shuffled_audio'] == summary['shuffled_audio']
  assert len(list((tmp_path / 'run' / 'evaluate' / 'overlays').glob('*.png'))) == config.eval.overlays
