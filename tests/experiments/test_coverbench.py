"""CoverBench: loading, the fixed prompts, the verdict parser and re-prompt, truncation, macro-F1."""
import json
import os
import subprocess
import sys

import pytest

from configs.coverbench import get_config
from experiments.coverbench.benchmark import CoverBenchBenchmark, random_baseline
from experiments.coverbench.data import CoverBenchExample, load_coverbench
from experiments.coverbench.experiment import PROGRAMS
from experiments.coverbench.prompts import REPROMPT, parse_verdict, render
from experiments.coverbench.synthetic import write_synthetic_coverbench
from mmjax.evals import evaluate
from tests.evals.fakes import FakeResponder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  path = write_synthetic_coverbench(str(tmp_path_factory.mktemp('cb') / 'eval.jsonl'), n=20, seed=2)
  return path, [json.loads(line) for line in open(path)]


def test_load_jsonl_json_and_parquet(data, tmp_path):
  path, records = data
  examples, field = load_coverbench(path)
  assert field == 'dataset' and len(examples) == 20 and sum(e.label for e in examples) == 11
  assert examples[0] == CoverBenchExample(records[0]['context'], records[0]['claim'],
                                          records[0]['label'], records[0]['dataset'])
  (tmp_path / 'list.json').write_text(json.dumps(records))
  (tmp_path / 'split.json').write_text(json.dumps({'eval': records}))
  assert load_coverbench(str(tmp_path / 'list.json'))[0] == examples
  assert load_coverbench(str(tmp_path / 'split.json'))[0] == examples
  pq = pytest.importorskip('pyarrow.parquet')
  import pyarrow as pa
  pq.write_table(pa.Table.from_pylist(records), str(tmp_path / 'eval.parquet'))
  assert load_coverbench(str(tmp_path / 'eval.parquet'))[0] == examples
  assert load_coverbench(path, source_field='table_format')[0][1].source == 'json'


def test_labels_and_bad_records(tmp_path):
  path = tmp_path / 'x.jsonl'
  path.write_text('{"context": "c", "claim": "k", "label": "True"}\n{"context": "c", "claim": "k", "label": 0}\n')
  examples, field = load_coverbench(str(path))
  assert [e.label for e in examples] == [True, False] and field == '' and examples[0].source == ''
  path.write_text('{"context": "c", "claim": "k", "label": "maybe"}\n')
  with pytest.raises(ValueError, match='record 0: label must be a boolean'):
    load_coverbench(str(path))
  path.write_text('{"context": "c", "label": true}\n')
  with pytest.raises(ValueError, match=r"record 0: missing field\(s\) \['claim'\]"):
    load_coverbench(str(path))


def test_prompts_are_the_fixed_strings():
  instruction = ("Your task is to check if the Claim is correct according to the Evidence. Generate "
                 "'Correct' if the Claim is correct according to the Evidence, or 'Incorrect' if the "
                 "claim is incorrect or cannot be verified.")
  assert render('CTX', 'CLM', 'zero_shot') == instruction + '\n\nEvidence: CTX\nClaim: CLM\nAnswer:'
  assert render('CTX', 'CLM', 'cot') == (instruction + "\n\nEvidence: CTX\nClaim: CLM\n"
                                         "Let's think step-by-step:")
  with pytest.raises(ValueError, match='prompt style'):
    render('c', 'k', 'few_shot')


@pytest.mark.parametrize('output,verdict', [
    ('Correct', True), ('Incorrect', False), ('correct.', True), ('**Incorrect**.', False),
    (' "Correct"', True), ('The claim is correct.', True), ('The claim is incorrect.', False),
    ('The claim is not correct.', False), ('INCORRECT', False),
    ('Correct. The evidence states the revenue was 500.', True),
    ('Incorrect - the table shows a different value, so the claim is not correct', False),
    ('The table is correct about 2016, but the claim is incorrect.', None),
    ('Step 1: the claim says 500. Step 2: the table says 520. Final answer: Incorrect', False),
    ('Checking whether it is correct... Answer: Correct', True),
    ('I cannot tell from the evidence.', None), ('', None), ('incorrectly formatted', None),
])
def test_parse_verdict(output, verdict):
  assert parse_verdict(output) is verdict


def test_reprompt_and_truncation_through_the_responder(data, tmp_path):
  path, _ = data
  examples, _ = load_coverbench(path)

  def answer(p):
    if p.assistant_prefix:
      return ' Incorrect'
    return 'Hmm, hard to say.' if len(p.text) % 2 else 'Correct'

  responder = FakeResponder(answer, max_context_tokens=130)
  bench = CoverBenchBenchmark(examples, style='cot')
  scores = evaluate(bench, responder, str(tmp_path), batch_size=4, run_info={}, title='t',
                    progress=False)
  first = [p for p in responder.prompts if not p.assistant_prefix]
  again = [p for p in responder.prompts if p.assistant_prefix]
  assert len(first) == 20 and again
  for p in again:
    assert p.assistant_prefix == 'Hmm, hard to say.\n' + REPROMPT
    assert responder.count_tokens(p) <= 130 and p.text.endswith("Let's think step-by-step:")
  records = [json.loads(line) for line in open(tmp_path / 'responses.jsonl')]
  for ex, r, p in zip(examples, sorted(records, key=lambda r: r['id']), first):
    kept = p.text.split('\n\nEvidence: ', 1)[1].rsplit('\nClaim: ', 1)[0]
    assert ex.context.endswith(kept) and r.get('truncated_chars', 0) == len(ex.context) - len(kept)
    assert p.text.endswith(f'\nClaim: {ex.claim}\nLet\'s think step-by-step:')
    assert responder.count_tokens(p) <= 130
  s = scores.summary
  assert s['truncated'] == sum('truncated_chars' in r for r in records) > 0
  assert s['reprompted'] == len(again) and s['unparsed'] == 0
  assert s['prompt'] == 'cot'


def test_macro_f1_overall_and_per_source_hand_computed():
  # source X: gold T T F F, pred T F F F -> F1+ 2/3, F1- 4/5, macro 73.33
  # source Y: gold T T F,   pred T T T   -> F1+ 4/5, F1- 0,   macro 40
  # all:      TP 3 FN 1 FP 1 TN 2        -> F1+ 6/8, F1- 4/6, macro 70.83
  gold = [True, True, False, False, True, True, False]
  answers = ['Correct', 'Incorrect', 'Incorrect', 'Incorrect', 'Correct', 'Correct', 'Correct']
  sources = 'XXXXYYY'
  examples = [CoverBenchExample('c', 'k', g, s) for g, s in zip(gold, sources)]
  records = [{'id': i, 'response': a} for i, a in enumerate(answers)]
  s = CoverBenchBenchmark(examples).score(records).summary
  assert s['per_source'] == pytest.approx({'X': 50 * (2 / 3 + 4 / 5), 'Y': 40.0})
  assert s['macro_f1'] == pytest.approx(50 * (6 / 8 + 4 / 6))
  assert (s['n'], s['unparsed']) == (7, 0)
  perfect = [{'id': i, 'response': 'Correct' if g else 'Incorrect'} for i, g in enumerate(gold)]
  assert CoverBenchBenchmark(examples).score(perfect).summary['macro_f1'] == 100.0
  all_true = [{'id': i, 'response': 'Correct'} for i in range(7)]
  assert CoverBenchBenchmark(examples).score(all_true).summary['macro_f1'] == pytest.approx(50 * 8 / 11)
  unparsed = [dict(r, response='?') if r['id'] == 0 else r for r in perfect]
  u = CoverBenchBenchmark(examples).score(unparsed).summary
  assert u['unparsed'] == 1 and u['f1_correct'] == pytest.approx(100 * 6 / 7)


def test_baselines():
  gold = [True] * 55 + [False] * 45
  assert random_baseline(gold) == pytest.approx(49.87, abs=0.01)
  examples = [CoverBenchExample('c', 'k', g) for g in gold]
  s = CoverBenchBenchmark(examples).score([{'id': i, 'response': 'x'} for i in range(100)]).summary
  assert s['baselines']['always_correct'] == pytest.approx(35.48, abs=0.01)
  assert s['macro_f1'] == 0.0 and s['per_source'] == {}


def _write(path, answers):
  with open(path, 'w') as f:
    for i, a in answers:
      f.write(json.dumps({'id': i, 'response': a}) + '\n')


def test_score_program_and_id_errors(data, tmp_path):
  path, records = data
  responses = tmp_path / 'r.jsonl'
  _write(responses, [(i, 'Correct' if r['label'] else 'Incorrect') for i, r in enumerate(records)])
  config = get_config()
  config.data_file, config.responses = path, str(responses)
  s = PROGRAMS['score'](config, str(tmp_path / 'out'))
  assert {'macro_f1', 'per_source', 'n', 'unparsed'} <= set(s)
  assert s['macro_f1'] == 100.0 and set(s['per_source']) == {'FinQA', 'TabFact', 'ContractNLI'}
  for name in ('summary.json', 'summary.md', 'summary.png'):
    assert os.path.getsize(tmp_path / 'out' / name) > 0
  _write(responses, [(0, 'Correct'), (0, 'Correct'), (25, 'Correct')])
  with pytest.raises(ValueError, match=r'missing ids \(19\): 1-19; duplicate ids \(1\): 0; '
                                       r'ids not in the data \(0..19\) \(1\): 25'):
    PROGRAMS['score'](config, str(tmp_path / 'out'))


def test_smoke_variant_truncates_and_reprompts(tmp_path):
  config = get_config('variant=smoke')
  config.progress_bar = False
  s = PROGRAMS['generate'](config, str(tmp_path))
  assert s['n'] == 20 and s['truncated'] == 20 and s['reprompted'] > 0


def test_launch_score_program(data, tmp_path):
  path, records = data
  responses = tmp_path / 'r.jsonl'
  _write(responses, [(i, 'Correct') for i in range(len(records))])
  out = subprocess.run(
      [sys.executable, 'launch.py', '--config', 'configs/coverbench.py:prompt=cot', '--mode=score',
       f'--config.data_file={path}', f'--config.responses={responses}', '--workdir', str(tmp_path / 'w')],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-2000:]
  s = json.load(open(tmp_path / 'w' / 'summary.json'))
  assert s['macro_f1'] == pytest.approx(50 * 22 / 31) and s['prompt'] == 'cot'
