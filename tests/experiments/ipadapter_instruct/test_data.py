"""IPAdapter-Instruct data: the JSONL layout round trip, bad records named by line, the condition dropout rates, the
instruction pools' keyword filter, and the synthetic smoke tasks."""
import json

import numpy as np
import pytest
from PIL import Image

from experiments.ipadapter_instruct import data
from experiments.ipadapter_instruct.pipeline import CLIP_MEAN, CLIP_STD, QUERIES
from experiments.ipadapter_instruct.tiny import tiny_tokenizer
from mmjax.data import ImageReadError, make_pipeline


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  root = tmp_path_factory.mktemp('smoke')
  return root, *data.write_smoke_dataset(root, per_task=6, seed=0, val_per_task=2)


def test_smoke_dataset_round_trip_and_examples(smoke, tmp_path):
  root, train, val = smoke
  records = data.read_records(train)
  assert [r.task for r in records] == [t for t in data.SMOKE_TASKS for _ in range(6)]
  assert [r.task for r in data.read_records(val)] == [t for t in data.SMOKE_TASKS for _ in range(2)]
  assert all(r.instruction is None and r.caption and r.line == i + 1 for i, r in enumerate(records))
  # Written back elsewhere (paths relative to the new file) and read again: the same records.
  (tmp_path / 'sub').mkdir()
  copy = data.write_records(tmp_path / 'sub' / 'copy.jsonl', records)
  again = data.read_records(copy)
  assert [r[:6] for r in again] == [r[:6] for r in records]
  assert json.loads(copy.read_text().splitlines()[0])['condition'].startswith('..')

  source = data.InstructSource(records, resolution=16, condition_size=32)
  for i, r in enumerate(records):
    example = source[i]
    assert example['target'].shape == (16, 16, 3) and example['condition'].shape == (32, 32, 3)
    assert -1 <= example['target'].min() and example['target'].max() <= 1 and example['target'].std() > 0.1
    pixels = np.asarray(Image.open(r.condition).convert('RGB'), np.float32) / 255
    np.testing.assert_allclose(example['condition'], (pixels - CLIP_MEAN) / CLIP_STD, atol=1e-5)
    same = np.array_equal(np.asarray(Image.open(r.condition)), np.asarray(Image.open(r.target)))
    assert same == (r.task == 'everything'), r
    assert (str(example['prompt']), str(example['task']), str(example['instruction'])) == (r.prompt, r.task, '')


def _write(tmp_path, lines, images=('c.png', 't.png')):
  for name in images:
    Image.new('RGB', (8, 8), 'red').save(tmp_path / name)
  path = tmp_path / 'records.jsonl'
  path.write_text('\n'.join(line if isinstance(line, str) else json.dumps(line) for line in lines) + '\n')
  return path


GOOD = {'condition': 'c.png', 'target': 't.png', 'prompt': 'a cat', 'task': 'style'}


@pytest.mark.parametrize('bad, message', [
    ('{"condition": ', 'line 2: not JSON'),
    ('[1, 2]', 'line 2: expected a JSON object'),
    ({k: v for k, v in GOOD.items() if k != 'prompt'}, r"line 2: missing \['prompt'\]"),
    ({**GOOD, 'instrution': 'x'}, r"line 2: unknown keys \['instrution'\]"),
    ({**GOOD, 'prompt': 3}, 'line 2: prompt must be a string'),
    ({**GOOD, 'task': 'colr'}, "line 2: unknown task 'colr'; the tasks are everything, style, colour"),
])
def test_bad_records_are_named_by_line(tmp_path, bad, message):
  path = _write(tmp_path, [GOOD, bad])
  with pytest.raises(ValueError, match=f'{path}.*{message}'):
    data.read_records(path)


def test_missing_and_undecodable_images_are_named(tmp_path):
  path = _write(tmp_path, [GOOD, {**GOOD, 'target': 'gone.png'}])
  with pytest.raises(FileNotFoundError, match=rf'{path} line 2: the target image .*gone.png does not exist'):
    data.read_records(path)
  path = _write(tmp_path, ['', GOOD, {**GOOD, 'condition': 'broken.png'}])
  (tmp_path / 'broken.png').write_bytes(b'not a png')
  records = data.read_records(path)
  assert [r.line for r in records] == [2, 3]  # blank lines are no records, and lines keep their numbers
  source = data.InstructSource(records, resolution=8, condition_size=8)
  source[0]
  with pytest.raises(ImageReadError, match=rf'{path} line 3: cannot read image .*broken.png'):
    source[1]
  with pytest.raises(FileNotFoundError, match='no such JSONL'):
    data.read_records(tmp_path / 'absent.jsonl')


def test_condition_dropout_rates_and_text():
  tokenizer = tiny_tokenizer()
  transform = data.TextAndDropout(tokenizer, {'colour': ['use the colour', 'keep the palette']}, drop_text=0.05,
                                  drop_image=0.05, drop_both=0.05)
  condition = np.full((4, 4, 3), 0.5, np.float32)
  example = {'target': np.zeros((4, 4, 3), np.float32), 'condition': condition, 'prompt': np.asarray('a circle'),
             'task': np.asarray('colour'), 'instruction': np.asarray('')}
  empty, prompt = tokenizer(['', 'a circle'])
  pool = {tuple(ids) for ids in tokenizer(['use the colour', 'keep the palette'])}
  n = 6000
  counts = {'image': 0, 'text': 0, 'both': 0}
  drawn = set()
  for i in range(n):
    out = transform.random_map(dict(example), np.random.default_rng(i))
    image_dropped = not out['condition'].any()
    text_dropped = np.array_equal(out['prompt_ids'], empty)
    assert image_dropped or np.array_equal(out['condition'], condition)
    assert text_dropped or np.array_equal(out['prompt_ids'], prompt)
    # No image, no instruction (the pipeline's unconditional branch); otherwise one from the pool.
    assert np.array_equal(out['instruction_ids'], empty) if image_dropped else tuple(out['instruction_ids']) in pool
    drawn.add(tuple(out['instruction_ids']))
    if image_dropped or text_dropped:
      counts['both' if image_dropped and text_dropped else 'image' if image_dropped else 'text'] += 1
  assert drawn == pool | {tuple(empty)}
  for kind, count in counts.items():  # 5% each; 5 binomial standard deviations is 0.014
    assert abs(count / n - 0.05) < 0.014, (kind, count / n)

  fixed = transform.random_map({**example, 'instruction': np.asarray('make it red')}, np.random.default_rng(1))
  assert np.array_equal(fixed['instruction_ids'], tokenizer('make it red')[0])
  with pytest.raises(ValueError, match="no instruction pool for task 'style'"):
    transform.random_map({**example, 'task': np.asarray('style')}, np.random.default_rng(0))
  with pytest.raises(ValueError, match='sum to at most 1'):
    data.TextAndDropout(tokenizer, {}, drop_text=0.5, drop_image=0.5, drop_both=0.5)


def test_pipeline_draws_are_deterministic(smoke):
  _, train, _ = smoke
  source = data.InstructSource(data.read_records(train), resolution=16, condition_size=32)
  transform = data.TextAndDropout(tiny_tokenizer(), data.INSTRUCTIONS, drop_text=0.05, drop_image=0.05,
                                  drop_both=0.05)
  first, again = (make_pipeline(source, global_batch_size=6, seed=3, transform=transform) for _ in range(2))
  for n in (0, 5):  # epoch 0 and epoch 1 (18 records)
    a, b = first[n], again[n]
    assert a.keys() == {'target', 'condition', 'instruction_ids', 'prompt_ids'}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert a['instruction_ids'].dtype == np.int32 and a['instruction_ids'].shape == (6, 77)


def test_instruction_filter(tmp_path):
  assert data.filter_instructions(data.INSTRUCTIONS) == (data.INSTRUCTIONS, 0)  # ours name no other task
  assert set(data.TASK_QUERIES.values()) == {pool[0] for pool in data.INSTRUCTIONS.values()} == set(QUERIES)
  assert data.names_other_task('keep the Style of the object', 'object') == 'style'
  assert data.names_other_task('use the same colors', 'colour') is None
  assert data.names_other_task('use the same colors', 'style') == 'colour'
  assert data.names_other_task('copy the faces', 'everything') == 'face'
  assert data.names_other_task('the surface, for the purpose', 'style') is None  # words, not substrings

  pools = {'object': ['use the object', 'keep the object but change its colour', 'put it in the background'],
           'style': ['use the style', 'the object in this style']}
  path = tmp_path / 'instructions.json'
  path.write_text(json.dumps(pools))
  assert data.load_instructions(path) == {'object': ['use the object'], 'style': ['use the style']}
  path.write_text(json.dumps({'pose': ['keep the face']}))
  with pytest.raises(ValueError, match=rf"{path}: no instruction of \['pose'\] is left"):
    data.load_instructions(path)
  path.write_text(json.dumps({'styel': ['x']}))
  with pytest.raises(ValueError, match=f"{path}: unknown task 'styel'"):
    data.load_instructions(path)
  path.write_text(json.dumps({'style': 'use the style'}))
  with pytest.raises(ValueError, match='must be a list of non-empty strings'):
    data.load_instructions(path)
  assert data.load_instructions('') == data.INSTRUCTIONS
