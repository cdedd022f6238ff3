"""MMIU: loading the official layouts, the official prompt, metrics against golden values, the score program."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.mmiu import get_config
from experiments.mmiu.benchmark import MMIUBenchmark, prompt_text
from experiments.mmiu.data import MMIUExample, load_mmiu, normalise_path
from experiments.mmiu.experiment import PROGRAMS
from experiments.mmiu.synthetic import write_synthetic_mmiu
from experiments.mmiu.tasks import QUESTION_FIRST
from mmjax.data import ImageReadError
from tests.evals.fakes import FakeResponder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = ('forensic_detection_blink', 'forensic_detection_forgerynet', 'spot_the_diff',
        'temporal_ordering', 'jigsaw_puzzle_solving', 'threed_cad_recognition')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """all.json in the release layout, 2 questions per key; record 0 uses all.json's
  '../MMIU-Benchmark/<task>/' paths and record 1 has a gold letter outside its options."""
  root = tmp_path_factory.mktemp('mmiu')
  path = write_synthetic_mmiu(str(root), per_key=2, keys=KEYS, seed=1)
  records = json.load(open(path))
  records[0]['input_image_path'] = [p.replace('./Low-level-semantic/', '../MMIU-Benchmark/')
                                    for p in records[0]['input_image_path']]
  records[1]['output'] = 'G'
  json.dump(records, open(path, 'w'))
  return path, records


def test_load_flat_json(data):
  path, records = data
  examples = load_mmiu(path)
  assert len(examples) == len(records) == 12
  first = examples[0]
  assert first.key == 'forensic_detection_blink' and first.task == 'forensic_detection'
  assert first.relation == 'Low-level-semantic'
  assert first.images[0] == 'forensic_detection_blink/forensic_detection_blink_0_0.jpg'
  assert examples[2].task == 'forensic_detection' and examples[4].task == 'spot_the_diff'
  assert examples[4].images[0].startswith('High-level-obj-semantic/spot_the_diff/')
  assert examples[1].gold == 'G' and 'G' not in examples[1].options
  assert first.options['A'] == 'the first image'
  bench = MMIUBenchmark(examples, image_root=os.path.dirname(path))
  bench.check_images()  # record 0's task-only paths resolve under the relation folder
  assert bench.image_files(0)[0].endswith('Low-level-semantic/forensic_detection_blink/'
                                          'forensic_detection_blink_0_0.jpg')


def test_nested_jsonl_and_parquet_read_the_same(data, tmp_path):
  path, records = data
  nested = tmp_path / 'mmiu.jsonl'
  with open(nested, 'w') as f:
    for r in records:
      f.write(json.dumps({'task': r['task'], 'options': r['options'],
                          'input': {k: r[k] for k in ('question', 'context', 'input_image_path')},
                          'output': {'output_text': r['output']}}) + '\n')
  pq = pytest.importorskip('pyarrow.parquet')
  import pyarrow as pa
  pq.write_table(pa.Table.from_pylist(records), str(tmp_path / 'all.parquet'))
  flat = [_fields(e) for e in load_mmiu(path)]
  for other in (load_mmiu(str(nested)), load_mmiu(str(tmp_path / 'all.parquet'))):
    assert [_fields(e) for e in other] == flat


def _fields(e):
  """Everything but `source`, which the nested layout lacks."""
  return (e.key, e.task, e.relation, e.question, e.context, e.options, e.images, e.gold)


def test_normalise_path():
  assert normalise_path('./2D-spatial/jigsaw/x.jpg') == '2D-spatial/jigsaw/x.jpg'
  assert normalise_path('../MMIU-Benchmark/t/x.jpg') == 't/x.jpg'
  assert normalise_path('.\\3D-spatial\\t\\x.jpg') == '3D-spatial/t/x.jpg'
  assert normalise_path('/abs/x.jpg') == '/abs/x.jpg'


def test_unknown_task_without_relation_folder_is_an_error(tmp_path):
  path = tmp_path / 'all.json'
  path.write_text(json.dumps([{'task': 'new_task', 'options': 'A: x', 'question': 'q', 'context': 'c',
                               'input_image_path': ['./new_task/a.jpg'], 'output': 'A'}]))
  with pytest.raises(ValueError, match="record 0: unknown task 'new_task'"):
    load_mmiu(str(path))
  path.write_text(json.dumps([{'task': 'new_task', 'options': 'A: x', 'question': 'q',
                               'input_image_path': ['./3D-spatial/new_task/a.jpg'], 'output': 'A'}]))
  with pytest.raises(ValueError, match="record 0: missing field 'context'"):
    load_mmiu(str(path))


def test_prompt_order_follows_the_official_task_list(data):
  path, _ = data
  examples = load_mmiu(path)
  bench = MMIUBenchmark(examples, image_root=os.path.dirname(path))
  tail = '\nPlease answer the option directly like A,B,C,D...'
  for i, ex in enumerate(examples):
    prompt, facts = bench.prompt(i, FakeResponder(str))
    first, second = (ex.question, ex.context) if ex.key in QUESTION_FIRST else (ex.context, ex.question)
    assert prompt.text == first + '\n' + second + tail == prompt_text(ex)
    assert prompt.images == bench.image_files(i) and facts == {}
  assert 'spot_the_diff' in QUESTION_FIRST and 'forensic_detection_blink' not in QUESTION_FIRST
  assert len(QUESTION_FIRST) == 23


def test_images_are_subsampled_to_fit_deterministically(data):
  path, _ = data
  examples = load_mmiu(path)
  small = FakeResponder(str, max_context_tokens=110, image_tokens=30)  # text 60-80 tokens: 1 image
  bench = MMIUBenchmark(examples, image_root=os.path.dirname(path), seed=3)
  first = [bench.prompt(i, small) for i in range(len(examples))]
  assert all(len(p.images) == 1 and f['kept_images'] == [bench.image_files(i).index(p.images[0])]
             for i, (p, f) in enumerate(first))
  assert [bench.prompt(i, small) for i in range(len(examples))] == first
  other = MMIUBenchmark(examples, image_root=os.path.dirname(path), seed=4)
  assert [other.prompt(i, small) for i in range(len(examples))] != first
  capped = MMIUBenchmark(examples, image_root=os.path.dirname(path), max_images=2)
  assert all(len(capped.prompt(i, FakeResponder(str))[0].images) == 2 for i in range(len(examples)))


def _ex(key, gold, n_options=4):
  from experiments.mmiu.tasks import RELATION_OF_KEY, paper_task
  options = {'ABCD'[k]: f'option {k}' for k in range(n_options)}
  return MMIUExample(key, paper_task(key), RELATION_OF_KEY[key], 'q', 'c', options, ('x.jpg',), gold)


def test_scores_match_hand_computed_values():
  # forensic_detection = 2 blink + 2 forgerynet questions (merged), spot_the_diff 1 (2 options),
  # temporal_ordering 5 (+1 without gold), one of them with gold G outside A-D.
  items = [('forensic_detection_blink', 'A', 'A'), ('forensic_detection_blink', 'A', '(A)'),
           ('forensic_detection_forgerynet', 'B', 'The answer is B'),
           ('forensic_detection_forgerynet', 'C', 'D'),
           ('spot_the_diff', 'B', 'option 1'),
           ('temporal_ordering', 'A', 'A'), ('temporal_ordering', 'A', 'B'),
           ('temporal_ordering', 'A', 'no idea'), ('temporal_ordering', 'D', 'C'),
           ('temporal_ordering', 'G', 'A'), ('temporal_ordering', None, 'A')]
  examples = [_ex(k, g, 2 if k == 'spot_the_diff' else 4) for k, g, _ in items]
  records = [{'id': i, 'response': r} for i, (_, _, r) in enumerate(items)]
  s = MMIUBenchmark(examples, image_root='.').score(records).summary
  assert s['per_task'] == {'forensic_detection': 75.0, 'spot_the_diff': 100.0,
                           'temporal_ordering': 20.0}
  assert s['per_relation'] == {'Low-level-semantic': 75.0, 'High-level-obj-semantic': 100.0,
                               'Continuous-temporal': 20.0}
  assert s['overall'] == pytest.approx(65.0)  # unweighted over the 3 tasks
  assert s['micro'] == pytest.approx(50.0)  # 5 of 10 questions
  assert s['per_data_key'] == {'forensic_detection_blink': 100.0, 'forensic_detection_forgerynet': 50.0,
                               'spot_the_diff': 100.0, 'temporal_ordering': 20.0}
  assert (s['n'], s['unmatched'], s['gold_not_in_options'], s['no_gold']) == (10, 1, 1, 1)
  random, frequency = s['baselines']['random'], s['baselines']['frequency']
  assert random['per_task'] == pytest.approx({'forensic_detection': 25.0, 'spot_the_diff': 50.0,
                                              'temporal_ordering': 20.0})
  assert random['overall'] == pytest.approx(95 / 3)
  assert frequency['per_task'] == {'forensic_detection': 50.0, 'spot_the_diff': 100.0,
                                   'temporal_ordering': 60.0}
  assert frequency['overall'] == pytest.approx(70.0)


def test_error_responses_and_the_judge_hook():
  examples = [_ex('temporal_ordering', 'B'), _ex('temporal_ordering', 'C'), _ex('temporal_ordering', 'A')]
  records = [{'id': 0, 'response': 'image none'}, {'id': 1, 'response': 'hmm, the last one maybe'},
             {'id': 2, 'response': 'A'}]
  bench = MMIUBenchmark(examples, image_root='.')
  judge = FakeResponder(lambda p: 'C')
  assert bench.judge_unmatched(records, judge) == 1  # only record 1: not an error, not matched
  assert judge.prompts[0].text.endswith('Answer: hmm, the last one maybe\nYour output: ')
  assert 'Options: A: option 0\nB: option 1' in judge.prompts[0].text
  s = bench.score(records).summary
  assert s['per_task'] == {'temporal_ordering': pytest.approx(200 / 3)} and s['unmatched'] == 1


def test_missing_and_undecodable_images_are_listed_before_generation(tmp_path):
  """A truncated image and a missing one are both named by one error before the first question is asked."""
  path = write_synthetic_mmiu(str(tmp_path / 'data'), per_key=2, keys=KEYS, seed=1)
  bench = MMIUBenchmark(load_mmiu(path), image_root=str(tmp_path))
  with pytest.raises(ImageReadError, match=r"MMIU images under image root '.*': \d+ of \d+ image files are "
                                           r'unreadable \(\d+ missing, 0 do not decode\)'):
    bench.check_images()
  files = MMIUBenchmark(load_mmiu(path), image_root=os.path.dirname(path)).image_files(5)
  truncated, missing = files[0], files[1]
  with open(truncated, 'rb') as f:
    head = f.read(300)
  with open(truncated, 'wb') as f:
    f.write(head)
  os.remove(missing)
  responder = FakeResponder(lambda prompt: pytest.fail('a question was asked before the images were checked'))
  config = get_config()
  config.data_file = path
  with pytest.raises(ImageReadError, match=r'2 of \d+ image files are unreadable \(1 missing, 1 do not decode\)') as e:
    PROGRAMS['generate'](config, str(tmp_path / 'run'), responder=responder)
  assert e.value.paths == [Path(truncated), Path(missing)] and responder.calls == 0


def _responses(path, records, answer):
  with open(path, 'w') as f:
    for i, r in enumerate(records):
      f.write(json.dumps({'id': i, 'response': answer(r)}) + '\n')


def test_score_program_writes_the_summary(data, tmp_path):
  path, records = data
  responses = tmp_path / 'r.jsonl'
  _responses(responses, records, lambda r: f"The answer is {r['output']}.")
  config = get_config()
  config.data_file, config.responses = path, str(responses)
  s = PROGRAMS['score'](config, str(tmp_path / 'out'))
  assert {'overall', 'per_task', 'per_relation', 'n', 'unmatched'} <= set(s)
  # record 1's gold G is not an option, so "The answer is G." matches nothing and is wrong.
  assert s['per_task']['forensic_detection'] == 75.0 and s['unmatched'] == 1
  assert s['overall'] == pytest.approx(100 - 25 / 5) and s['n'] == 12
  assert len(s['per_task']) == 5 and s['gold_not_in_options'] == 1
  assert json.load(open(tmp_path / 'out' / 'summary.json')) == s
  md = open(tmp_path / 'out' / 'summary.md').read()
  assert '| forensic_detection | Low-level-semantic | 4 | 75.0 |' in md
  assert os.path.getsize(tmp_path / 'out' / 'summary.png') > 0


def test_score_program_lists_bad_ids(data, tmp_path):
  path, records = data
  responses = tmp_path / 'r.jsonl'
  _responses(responses, records[:10], lambda r: 'A')
  with open(responses, 'a') as f:
    f.write('{"id": 3, "response": "A"}\n{"id": 40, "response": "A"}\n')
  config = get_config()
  config.data_file, config.responses = path, str(responses)
  with pytest.raises(ValueError, match=r'missing ids \(2\): 10-11; duplicate ids \(1\): 3; '
                                       r'ids not in the data \(0..11\) \(1\): 40'):
    PROGRAMS['score'](config, str(tmp_path / 'out'))


def test_smoke_variant_runs_and_resumes(tmp_path):
  config = get_config('variant=smoke')
  config.progress_bar = False
  s = PROGRAMS['generate'](config, str(tmp_path))
  assert s['n'] == 28 and s['images_subsampled'] > 0 and s['throughput']['generated'] == 28
  again = PROGRAMS['generate'](get_config('variant=smoke'), str(tmp_path))
  assert again['throughput']['generated'] == 0 and again['overall'] == s['overall']


def test_launch_score_program(data, tmp_path):
  path, records = data
  responses = tmp_path / 'r.jsonl'
  _responses(responses, records, lambda r: 'A')
  out = subprocess.run(
      [sys.executable, 'launch.py', '--config', 'configs/mmiu.py', '--mode', 'score',
       f'--config.data_file={path}', f'--config.responses={responses}', '--workdir', str(tmp_path / 'w')],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.load(open(tmp_path / 'w' / 'summary.json'))['n'] == 12
