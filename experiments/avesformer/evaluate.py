"""--mode evaluate: AVSBench's official test protocol on a trained AVESFormer, summary.json and PNG overlays.

  python launch.py --config configs/avesformer.py:task=s4 --workdir runs/avs_s4 --mode evaluate \
      --config.data.root=/data/AVSBench/Single-source

Protocol (metrics.py): the split in csv order, unshuffled, batch 4 videos (make_eval_pipeline(global_batch_size=4));
the padded rows of the last batch are dropped before BinaryMetrics.add, so it is AVSBench's short last batch.
S4 / MS3 report mIoU and F-score (means over batches). AVSS reports SemanticMetrics over 71 classes:
  - `miou` (all 71 classes, background included) is the number AVSBench-semantic papers report, and the official
    one here; `miou_noBg` is test.py's `miou_pc[:-1]` (drops class 70, since the palette makes background class 0);
    `miou_no_background` drops class 0, what the name intends. All three are written.
  - test.py counts the padded frames of 5-frame (v1) clips as all-background frames (it ignores
    gt_temporal_mask_flag): the default here. config.eval.frame_mask=True skips them (frame_flags) instead.
Reads the workdir's latest finished step (EMA where kept); frozen parts (VGGish, BatchNorm statistics) come from
the config's weight paths as in training. Writes workdir/evaluate/{summary.json, overlays/*.png}.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.avesformer import overlay
from experiments.avesformer.metrics import TEST_BATCH_SIZE, BinaryMetrics, SemanticMetrics, sigmoid
from mmjax.data import make_eval_pipeline

# The spec's section 6 (S4 mIoU/F, MS3 mIoU/F, AVSS mIoU/F; None = not published). AVESFormer: abstract only.
REFERENCE = [
    ('AVESFormer (paper)', '?', (79.9, None), (57.9, None), (31.2, None), 'abstract [V]'),
    ('TPAVI', 'PVTv2-B5', (78.7, 87.9), (54.0, 64.5), (29.8, 35.2), 'Stepping-Stones [V]'),
    ('TPAVI', 'R50', (72.8, 84.8), (47.9, 57.8), (20.2, 25.2), '[M]'),
    ('AVSegFormer ckpt', 'R50', (76.38, 86.7), (53.81, 65.6), (26.58, 31.5), 'README [V]'),
    ('AVSegFormer ckpt', 'B5', (83.06, 90.5), (61.33, 73.0), (37.31, 42.8), 'README [V]'),
    ('COMBO', 'R50', (81.7, 90.1), (54.5, 66.6), (33.3, 37.3), 'README [V]'),
    ('COMBO', 'B5', (84.7, 91.9), (59.2, 71.2), (42.1, 46.1), 'README [V]'),
]
TASK_COLUMN = {'s4': 2, 'ms3': 3, 'avss': 4}


class ShuffledAudio:
  """`source` with each video's audio taken from another video (a random cyclic shift of a permutation, seeded):
  the control that shows the model uses the audio."""

  def __init__(self, source: Any, seed: int):
    self.source = source
    order = np.random.default_rng(seed).permutation(len(source))
    self.donor = np.empty(len(source), np.int64)
    self.donor[order] = np.roll(order, 1)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {**self.source[index], 'audio': self.source[int(self.donor[index])]['audio']}


def shuffled_audio(source: Any, seed: int) -> ShuffledAudio:
  return ShuffledAudio(source, seed)


def evaluate_source(parts: Any, params: Any, source: Any, *, frame_mask: bool = False, overlays: int = 0,
                    out_dir: Path | None = None, class_names: list[str] | None = None) -> dict[str, float]:
  """Official-protocol metrics of `parts.forward` with `params` over `source` (batch 4, in order, short last batch).
  Binary models (C = 1) -> BinaryMetrics; semantic (C > 1) -> SemanticMetrics (frame_mask: skip padded frames).
  Writes overlay PNGs of the first `overlays` videos under out_dir."""
  forward = getattr(parts, 'jit_forward', None) or jax.jit(parts.forward)
  binary, semantic, written = None, None, 0
  for batch in make_eval_pipeline(source, global_batch_size=TEST_BATCH_SIZE):
    keep = np.asarray(batch['mask']) > 0
    logits, _ = forward(params, batch['frames'], batch['audio'])
    logits = np.asarray(logits)[keep]                                   # [b, T, H, W, C]
    frames, masks = np.asarray(batch['frames'])[keep], np.asarray(batch['masks'])[keep]
    if logits.shape[-1] == 1:
      binary = binary or BinaryMetrics()
      binary.add(logits[..., 0], masks)
    else:
      semantic = semantic or SemanticMetrics(logits.shape[-1])
      flags = np.asarray(batch['frame_flags'])[keep].reshape(-1) if frame_mask else None
      semantic.add(logits.reshape((-1,) + logits.shape[2:]), masks.reshape((-1,) + masks.shape[2:]), flags)
    for v in range(len(logits)):
      if written >= overlays or out_dir is None:
        break
      name = out_dir / f'video_{written:03d}.png'
      if logits.shape[-1] == 1:
        overlay.write_binary_overlays(name, frames[v], sigmoid(logits[v, ..., 0]), masks[v])
      else:
        names = class_names or [str(c) for c in range(logits.shape[-1])]
        overlay.write_semantic_overlays(name, frames[v], np.argmax(logits[v], -1), names,
                                        np.asarray(batch['frame_flags'])[keep][v])
      written += 1
  return binary.result() if binary is not None else semantic.result()


def reproduction_table(task: str, ours: dict[str, float] | None, label: str) -> list[dict[str, Any]]:
  """Rows {method, backbone, miou, fscore, source} for `task`: ours (percent) first, then the spec's numbers."""
  rows = [{'method': label, 'backbone': '', 'miou': None if ours is None else round(100 * ours['miou'], 2),
           'fscore': None if ours is None else round(100 * ours['fscore'], 2), 'source': 'this run'}]
  column = TASK_COLUMN[task]
  for entry in REFERENCE:
    miou, f = entry[column]
    rows.append({'method': entry[0], 'backbone': entry[1], 'miou': miou, 'fscore': f, 'source': entry[5]})
  return rows


def evaluate_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  from experiments.avesformer.experiment import make_parts, make_source, unboxed_frozen
  from mmjax.weights import read_workdir_params
  parts = make_parts(config)
  params, info = read_workdir_params(workdir)
  params = {**params, **unboxed_frozen(config, parts)}
  source = make_source(config, config.eval.split)
  out_dir = Path(workdir) / 'evaluate'
  metrics = evaluate_source(parts, params, source, frame_mask=config.eval.frame_mask, overlays=config.eval.overlays,
                            out_dir=out_dir / 'overlays', class_names=getattr(source, 'classes', None))
  summary = {'task': config.task, 'backbone': config.model.backbone, 'decoder': config.model.decoder,
             'recipe': config.recipe, 'split': config.eval.split, 'videos': len(source), 'step': info.step,
             'ema': info.ema, 'protocol': f'batch {TEST_BATCH_SIZE}, unshuffled, last batch short', 'metrics': metrics}
  if config.task == 'avss':
    summary['official'] = 'miou / fscore over all 71 classes; miou_noBg = test.py miou_pc[:-1] (drops class 70)'
    summary['frame_mask'] = bool(config.eval.frame_mask)
  if config.variant == 'smoke':
    shuffled = evaluate_source(parts, params, ShuffledAudio(source, config.eval.shuffle_seed))
    summary['shuffled_audio'] = shuffled
  label = f'ours ({config.model.decoder}, {config.model.backbone})'
  summary['table'] = reproduction_table(config.task, None if config.variant == 'smoke' else metrics, label)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / 'summary.json').write_text(json.dumps(summary, indent=2))
  return summary
