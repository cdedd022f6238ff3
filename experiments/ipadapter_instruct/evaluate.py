"""The evaluate program (`launch.py --config configs/ipadapter_instruct.py --mode evaluate`): CLIP-I/T/P/S of an
IPAdapter-Instruct adapter on held-out records, beside the paper's Table 1 (metrics.py).

Records: config.data.val (data.read_records), or for variant=smoke without one the smoke set's val split; the first
config.evaluate.max_per_task of each task. The adapter: the workdir's trained parameters (its latest finished
checkpoint, the EMA where kept), else config.adapter. The SD stack: config.pipeline, or the tiny stack of
config.seed for variant=smoke (the one training used). Each record's condition is generated from with the record's
instruction as the query when it is one of pipeline.QUERIES, else its task's canonical query (data.TASK_QUERIES),
its prompt, config.negative_prompt and the config.generate settings, config.evaluate.batch_size conditions at a
time. The CLIP of the metrics: config.evaluate.clip (an HF CLIPModel folder), or for variant=smoke the tiny stack's
image encoder with a random text tower (the numbers are then meaningless; the note in the outputs says so).

The workdir's checkpoints are only read; the outputs go to <workdir>/evaluate/:
  summary.json  {'results': {task: {metric: mean, 'count'}}, 'paper_table1', 'note', the settings}
  metrics.md    Table 1 with our row beside the paper's, then every metric of every task
  items.jsonl   one line per record: condition, task, query, prompt, caption and its metrics
  grid.png      config.evaluate.grid_rows records per task: condition | query and prompt | output
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from experiments.ipadapter_instruct import metrics, tiny
from experiments.ipadapter_instruct.checkpoint import AdapterWeights, load_adapter, split_unet
from experiments.ipadapter_instruct.data import TASK_QUERIES, Record, read_records, smoke_dataset
from experiments.ipadapter_instruct.pipeline import QUERIES, InstructPipeline, load_sd_for_adapter
from mmjax.models.clip import CLIPTextModelWithProjection
from mmjax.models.sd15 import StableDiffusionPipeline
from mmjax.weights import read_workdir_params
from mmjax.weights.workdir import finished_steps

SMOKE_NOTE = ('Smoke run: the SD stack and, without config.evaluate.clip, the CLIP that scores it (the tiny image '
              'encoder and a random text tower) are tiny and random, so these numbers only show that the program '
              'runs; they mean nothing.')


def _smoke(config: ml_collections.ConfigDict) -> bool:
  return config.variant == 'smoke' and not config.pipeline


def held_out_records(config: ml_collections.ConfigDict) -> dict[str, list[Record]]:
  """{task: its first config.evaluate.max_per_task records} of config.data.val (smoke: the smoke val split), in
  the file's task order."""
  if config.evaluate.max_per_task < 1:
    raise ValueError(f'config.evaluate.max_per_task must be at least 1, got {config.evaluate.max_per_task}.')
  if config.data.val:
    path = Path(config.data.val)
  elif _smoke(config):
    path = smoke_dataset(config.data.smoke_dir, per_task=config.data.smoke_per_task, seed=config.seed)[1]
  else:
    raise ValueError('config.data.val is empty: set the JSONL of held-out records (the layout: '
                     'experiments/ipadapter_instruct/data.py), or use variant=smoke.')
  by_task: dict[str, list[Record]] = {}
  for record in read_records(path):
    chosen = by_task.setdefault(record.task, [])
    if len(chosen) < config.evaluate.max_per_task:
      chosen.append(record)
  return by_task


def query_of(record: Record) -> str:
  """The record's instruction when the pipeline knows it as a query, else its task's canonical query."""
  return record.instruction if record.instruction in QUERIES else TASK_QUERIES[record.task]


def load_evaluated_pipeline(config: ml_collections.ConfigDict, workdir: str) -> tuple[InstructPipeline, str]:
  """(the pipeline with the evaluated adapter, in config.generate.dtype; where the adapter came from): the
  workdir's latest finished step, else config.adapter."""
  trained = (Path(workdir) / 'checkpoints').is_dir() and bool(finished_steps(workdir))
  if not trained and not config.adapter:
    raise ValueError(f'no adapter to evaluate: {workdir} holds no finished training checkpoint and config.adapter '
                     'is empty (train into this workdir first, or pass --config.adapter=FILE).')
  dtype = jnp.dtype(config.generate.dtype)
  if _smoke(config):
    sd, resampler = tiny.tiny_pipeline(config.seed), tiny.TINY_RESAMPLER
  elif config.pipeline:
    sd, resampler = load_sd_for_adapter(config.pipeline, dtype)
  else:
    raise ValueError('config.pipeline is empty: evaluation needs the diffusers SD1.5 folder (with image_encoder/) the '
                     'adapter was trained on (--config.pipeline=DIR), or variant=smoke.')
  if trained:
    params, info = read_workdir_params(workdir)
    weights = AdapterWeights(params['image_proj'], split_unet(params['unet'])[1])
    source = f'{workdir} step {info.step}{" (EMA)" if info.ema else ""}'
  else:
    weights, source = load_adapter(config.adapter, sd.unet.config, resampler), config.adapter
  weights = jax.tree.map(lambda x: jnp.asarray(x, dtype), weights)
  return InstructPipeline.from_parts(sd, resampler, weights), source


def smoke_scorer(sd: StableDiffusionPipeline, weight: float, seed: int) -> metrics.CLIPScorer:
  """The tiny stack's image encoder (with its projection) and a random text tower of the tiny text config with a
  projection to the same width, on the tiny tokenizer: a CLIP with no meaning, for the smoke runs."""
  text = CLIPTextModelWithProjection(dataclasses.replace(
      tiny.TEXT, with_projection=True, projection_dim=sd.image_encoder.config.projection_dim))
  params = tiny.random_params(text, jnp.zeros((1, tiny.TEXT.max_position_embeddings), jnp.int32), seed=seed)
  return metrics.CLIPScorer(sd.image_encoder, text, tiny.tiny_tokenizer(),
                            {'image_encoder': sd.params['image_encoder'], 'text_encoder': params}, weight)


def _scorer(config: ml_collections.ConfigDict, pipe: InstructPipeline) -> tuple[metrics.CLIPScorer, str]:
  weight = config.evaluate.clip_score_weight
  if config.evaluate.clip:
    return metrics.CLIPScorer.from_folder(config.evaluate.clip, weight=weight), config.evaluate.clip
  if _smoke(config):
    return smoke_scorer(pipe.sd, weight, config.seed + 1), 'tiny random CLIP'
  raise ValueError('config.evaluate.clip is empty: the metrics need an HF CLIPModel folder '
                   '(openai/clip-vit-large-patch14; --config.evaluate.clip=DIR).')


def _read_condition(record: Record) -> Image.Image:
  try:
    with Image.open(record.condition) as image:
      return image.convert('RGB')
  except (OSError, ValueError) as e:
    raise ValueError(f'{record.at}: the condition image {record.condition} cannot be read ({e}).') from None


def _batches(records: Sequence[Record], size: int) -> list[list[Record]]:
  """Consecutive batches of at most `size` records that share a query (one query per pipeline call)."""
  batches: list[list[Record]] = []
  for record in records:
    if batches and len(batches[-1]) < size and query_of(batches[-1][0]) == query_of(record):
      batches[-1].append(record)
    else:
      batches.append([record])
  return batches


def evaluate_program(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Generates from the held-out records, scores them and writes <workdir>/evaluate/; returns the summary."""
  g, e = config.generate, config.evaluate
  if e.batch_size < 1:
    raise ValueError(f'config.evaluate.batch_size must be at least 1, got {e.batch_size}.')
  by_task = held_out_records(config)
  pipe, adapter = load_evaluated_pipeline(config, workdir)
  scorer, clip = _scorer(config, pipe)
  kwargs = dict(num_inference_steps=g.num_steps, guidance_scale=g.guidance_scale, instruct_scale=g.instruct_scale,
                image_scale=g.image_scale, scale=g.scale, auto_scale=g.auto_scale, height=g.height or None,
                width=g.width or None)
  start = time.perf_counter()
  items: dict[str, list[dict[str, float]]] = {}
  lines, grid, shown = [], ([], [], []), dict.fromkeys(by_task, 0)
  for task, records in by_task.items():
    for number, batch in enumerate(_batches(records, e.batch_size)):
      conditions = [_read_condition(r) for r in batch]
      query = query_of(batch[0])
      outputs = np.asarray(pipe.generate(conditions, query, [r.prompt for r in batch], config.negative_prompt,
                                         seed=g.seed + number, **kwargs))
      scores = scorer.score(outputs, conditions, [r.prompt for r in batch], [r.caption for r in batch])
      items.setdefault(task, []).extend(scores)
      for record, condition, output, score in zip(batch, conditions, outputs, scores):
        lines.append({'condition': str(record.condition), 'task': task, 'query': query, 'prompt': record.prompt,
                      'caption': record.caption, **score})
        if shown[task] < e.grid_rows:
          shown[task] += 1
          for column, value in zip(grid, (condition, f'{query}\nprompt: {record.prompt}', output)):
            column.append(value)
    logging.info('evaluated %d %s records (%.1f s so far, compilation included)', len(records), task,
                 time.perf_counter() - start)
  results = metrics.mean_metrics(items)
  settings = {'adapter': adapter, 'pipeline': config.pipeline or 'tiny random (variant=smoke)', 'clip': clip,
              'clip_score_weight': e.clip_score_weight, 'negative_prompt': config.negative_prompt,
              'generate': {key: g[key] for key in g}, 'seconds': time.perf_counter() - start}
  note = SMOKE_NOTE if _smoke(config) else ''
  out_dir = Path(workdir) / 'evaluate'
  if jax.process_index() == 0:
    metrics.write_summary(out_dir, results, note=note, extra=settings)
    (out_dir / 'items.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines), encoding='utf-8')
    if grid[0]:
      metrics.write_grid(out_dir / 'grid.png', *grid)
  logging.info('IPAdapter-Instruct metrics of %s (CLIP: %s) written to %s:\n%s', adapter, clip, out_dir,
               metrics.metrics_markdown(results))
  return {'results': results, 'note': note, **settings, 'out_dir': os.fspath(out_dir)}
