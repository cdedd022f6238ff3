"""The CLIP metrics: our CLIPScorer's embeddings against transformers' CLIPModel on a tiny random CLIPModel folder,
each metric against a NumPy computation on known vectors, the Table 1 / summary writer, the PNG grid, and the
evaluate program end to end on the smoke setup (a workdir holding a random adapter, 2 records per task, 3 steps)."""
import json

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from PIL import Image

from configs.ipadapter_instruct import get_config
from experiments.ipadapter_instruct import metrics
from experiments.ipadapter_instruct.data import SMOKE_TASKS, TASK_QUERIES
from experiments.ipadapter_instruct.evaluate import SMOKE_NOTE, evaluate_program
from experiments.ipadapter_instruct.pipeline import random_adapter
from experiments.ipadapter_instruct.tiny import TINY_RESAMPLER, VOCAB, tiny_pipeline, tiny_tokenizer
from mmjax.data.clip_tokenizer import BOS, EOS
from tests.hf_models import perturb
from tests.numerics import assert_close_torch

TEXTS = ['a cat on a mat', 'use the style', '', 'a very long prompt ' * 10]


def _features(output) -> np.ndarray:
  """transformers 4 returns the projected embeddings, 5 an output whose pooler_output holds them."""
  return (output if isinstance(output, torch.Tensor) else output.pooler_output).detach().numpy()


def test_scorer_matches_transformers_clip_model(tmp_path):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, pad_token_id=VOCAB[EOS], bos_token_id=VOCAB[BOS],
                       eos_token_id=VOCAB[EOS]),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8, hidden_act='gelu'),
      projection_dim=24)
  model = transformers.CLIPModel(config).eval()
  perturb(model, 0)
  model.save_pretrained(tmp_path)
  tiny_tokenizer().save(tmp_path)
  scorer = metrics.CLIPScorer.from_folder(tmp_path, weight=1.5)
  assert scorer.weight == 1.5 and scorer.image_size == 32

  pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = scorer.tokenizer(TEXTS)
  with torch.no_grad():
    image_ref = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    text_ref = _features(model.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64))))
  assert image_ref.shape == (3, 24) and text_ref.shape == (len(TEXTS), 24)
  assert_close_torch(scorer.image_features(pixels), image_ref)
  assert_close_torch(scorer.text_features(TEXTS), text_ref)

  # Items with and without a caption; float images in [0, 1] score as the uint8 images they round to.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 40, 48, 3), np.uint8)
  conditions = [Image.fromarray(x) for x in rng.integers(0, 256, (3, 36, 36, 3), np.uint8)]
  np.testing.assert_array_equal(scorer.embed_images(images / 255.0), scorer.embed_images(images))
  items = scorer.score(images, conditions, TEXTS[:3], [None, 'a cat', None])
  expected = metrics.item_metrics(scorer.embed_images(images), scorer.embed_images(conditions),
                                  scorer.text_features(TEXTS[:3]), scorer.text_features(['a cat'] * 3), 1.5)
  assert [set(item) for item in items] == [{'CLIP-I', 'CLIP-P'}, set(metrics.METRICS), {'CLIP-I', 'CLIP-P'}]
  for i, item in enumerate(items):
    for metric, value in item.items():
      np.testing.assert_allclose(value, expected[metric][i], rtol=1e-6, err_msg=f'{metric} of item {i}')


def test_load_clip_model_refuses_a_single_tower(tmp_path):
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
      patch_size=8)).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"config\.json: model_type 'clip_vision_model' is not an HF CLIPModel"):
    metrics.load_clip_model(tmp_path)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_metrics_against_numpy():
  rng = np.random.default_rng(1)
  gen, cond, prompt, caption = (rng.normal(size=(5, 8)) * rng.uniform(0.5, 3, size=(5, 1)) for _ in range(4))
  np.testing.assert_allclose(metrics.clip_i(gen, cond), np.sum(_unit(gen) * _unit(cond), -1), rtol=1e-12)
  cos = np.sum(_unit(gen) * _unit(prompt), -1)
  assert (cos < 0).any() and (cos > 0).any()
  np.testing.assert_allclose(metrics.clip_score(gen, prompt, 2.5), 2.5 * np.where(cos > 0, cos, 0), rtol=1e-12)
  d1, d2 = _unit(gen) - _unit(prompt), _unit(cond) - _unit(caption)
  expected = 2.0 * np.sum(d1 * d2, -1) / np.linalg.norm(d1, axis=-1) / np.linalg.norm(d2, axis=-1)
  np.testing.assert_allclose(metrics.clip_s(gen, prompt, cond, caption, 2.0), expected, rtol=1e-12)
  # Identical directions (at any lengths of the embeddings) score the weight; opposite ones minus it.
  e = np.eye(8)[:2]
  np.testing.assert_allclose(metrics.clip_s(3 * e[:1], e[1:], e[:1], 5 * e[1:], 2.5), [2.5])
  np.testing.assert_allclose(metrics.clip_s(e[:1], e[1:], e[1:], e[:1], 2.5), [-2.5])
  both = metrics.item_metrics(gen, cond, prompt, caption, 2.5)
  assert set(both) == set(metrics.METRICS)
  np.testing.assert_allclose(both['CLIP-T'], metrics.clip_score(gen, caption, 2.5))
  assert set(metrics.item_metrics(gen, cond, prompt, None)) == {'CLIP-I', 'CLIP-P'}


def test_summary_beside_table1(tmp_path):
  items = {'everything': [{'CLIP-I': 0.5, 'CLIP-T': 0.25, 'CLIP-P': 0.125}, {'CLIP-I': 0.75, 'CLIP-P': 0.375}],
           'colour': [{'CLIP-I': 0.1, 'CLIP-P': 0.2}]}
  results = metrics.mean_metrics(items)
  assert results['everything'] == {'count': 2, 'CLIP-I': 0.625, 'CLIP-T': 0.25, 'CLIP-P': 0.25}
  metrics.write_summary(tmp_path / 'out', results, paper_tasks={'everything': 'replication'}, note='random weights',
                        extra={'step': 3})
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert summary['results'] == results and summary['step'] == 3 and summary['note'] == 'random weights'
  assert summary['paper_table1']['Instruct']['style CLIP-S'] == metrics.TABLE1['Instruct'][2]
  lines = (tmp_path / 'out' / 'metrics.md').read_text().splitlines()
  assert 'random weights' in lines
  header = next(line for line in lines if line.startswith('| model |'))
  assert header.count('|') == len(metrics.TABLE1_COLUMNS) + 2
  ours = next(line for line in lines if line.startswith('| **ours**'))
  cells = [c.strip() for c in ours.strip('|').split('|')][1:]
  assert cells[:2] == ['0.6250', '0.2500'] and cells[2:] == [metrics.MISSING] * 8
  paper = next(line for line in lines if line.startswith('| Instruct (paper)'))
  assert '1.1171' in paper
  colour = next(line for line in lines if line.startswith('| colour |'))
  assert [c.strip() for c in colour.strip('|').split('|')] == ['colour', '1', '0.1000', metrics.MISSING, '0.2000',
                                                               metrics.MISSING]


def test_grid(tmp_path):
  red = np.zeros((16, 16, 3), np.uint8)
  red[..., 0] = 255
  blue = np.zeros((8, 8, 3), np.float32)
  blue[..., 2] = 1.0
  metrics.write_grid(tmp_path / 'grid.png', [red, Image.fromarray(red)], ['use the colour', 'x ' * 200],
                     [blue, blue], cell=64)
  grid = np.asarray(Image.open(tmp_path / 'grid.png'))
  assert grid.shape == (128, 256, 3)
  np.testing.assert_array_equal(grid[64:128, :64], np.broadcast_to([255, 0, 0], (64, 64, 3)))
  np.testing.assert_array_equal(grid[:64, 192:], np.broadcast_to([0, 0, 255], (64, 64, 3)))
  text = grid[:64, 64:192]
  assert (text < 128).any() and (text == 255).mean() > 0.5  # dark glyphs on white
  with pytest.raises(ValueError, match='as many conditions'):
    metrics.write_grid(tmp_path / 'bad.png', [red], [], [blue])


def test_evaluate_program_on_the_smoke_setup(tmp_path):
  config = get_config('variant=smoke')
  config.data.smoke_dir, config.data.smoke_per_task = str(tmp_path / 'data'), 8  # 2 held-out records per task
  config.evaluate.max_per_task, config.evaluate.grid_rows = 2, 1
  config.generate.num_steps, config.generate.height, config.generate.width = 3, 0, 0
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match='no adapter to evaluate.*config.adapter is empty'):
    evaluate_program(config, str(workdir))
  sd = tiny_pipeline(config.seed)
  weights = random_adapter(sd, TINY_RESAMPLER, 5)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(workdir / 'checkpoints' / '3' / 'state',
                      {'step': np.int32(3), 'params': {'image_proj': weights.image_proj, 'unet': weights.unet_ip}})

  summary = evaluate_program(config, str(workdir))
  out = workdir / 'evaluate'
  assert summary['adapter'] == f'{workdir} step 3' and summary['note'] == SMOKE_NOTE
  results = summary['results']
  assert list(results) == list(SMOKE_TASKS) and all(row['count'] == 2 for row in results.values())
  items = [json.loads(line) for line in (out / 'items.jsonl').read_text().splitlines()]
  assert [item['query'] for item in items] == [TASK_QUERIES[t] for t in SMOKE_TASKS for _ in range(2)]
  for task, row in results.items():
    mine = [item for item in items if item['task'] == task]
    assert set(row) == {'count', *metrics.METRICS}  # the smoke records carry captions
    for metric in metrics.METRICS:
      np.testing.assert_allclose(row[metric], np.mean([item[metric] for item in mine]), rtol=1e-12)
    assert all(-1 <= item['CLIP-I'] <= 1 and 0 <= item['CLIP-P'] <= 2.5 and abs(item['CLIP-S']) <= 2.5
               for item in mine)
  saved = json.loads((out / 'summary.json').read_text())
  assert saved['results'] == results and saved['clip'] == 'tiny random CLIP' and saved['note'] == SMOKE_NOTE
  ours = next(line for line in (out / 'metrics.md').read_text().splitlines() if line.startswith('| **ours**'))
  assert f'{results["everything"]["CLIP-I"]:.4f}' in ours and ours.count(metrics.MISSING) == 6
  assert np.asarray(Image.open(out / 'grid.png')).shape == (3 * 192, 4 * 192, 3)
