"""The runner: resumable batches, follow-ups, response-file validation and the written reports."""
import json
import os

import pytest

from mmjax.evals import (
  Chart,
  Prompt,
  ResponseLog,
  Scores,
  Table,
  accuracy,
  evaluate,
  format_ids,
  generate,
  read_responses,
  score_file,
)
from tests.evals.fakes import FakeResponder


class ToyBench:
  """Example i asks 'q{i}' and is right when the answer is 'a{i}'; an answer '?' gets a follow-up."""
  name = 'toy'

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def prompt(self, index, responder):
    return Prompt(f'q{index}'), ({'odd': True} if index % 2 else {})

  def follow_up(self, index, response, responder):
    return Prompt(f'q{index}', assistant_prefix='say it:') if response == '?' else None

  def score(self, records):
    right = [r.get('follow_up', r['response']) == f'a{r["id"]}' for r in records]
    acc = accuracy(right)
    return Scores({'accuracy': acc, 'n': len(records)}, [Table('Summary', ('metric', 'value'),
                                                               [('accuracy', acc)])],
                  Chart('toy', {'all': acc}, 'accuracy (%)', lines={'overall': acc}))


def _answer(p):
  i = p.text[1:]
  return f'a{i}' if p.assistant_prefix or int(i) % 3 else '?'


def test_resume_skips_finished_ids(tmp_path):
  bench, workdir = ToyBench(10), str(tmp_path)
  flaky = FakeResponder(_answer, fail_after_calls=2)  # two prompt batches, then interrupted
  with pytest.raises(KeyboardInterrupt):
    generate(bench, flaky, workdir, batch_size=3, run_info={'data': 'toy'}, progress=False)
  # batch 1 (ids 0-2) had a follow-up for id 0 (2 calls); batch 2 was interrupted before writing.
  assert sorted(ResponseLog(os.path.join(workdir, 'responses.jsonl'), 10).done) == [0, 1, 2]
  again = FakeResponder(_answer)
  scores = evaluate(bench, again, workdir, batch_size=3, run_info={'data': 'toy'}, title='Toy',
                    progress=False)
  assert sorted(p.text for p in again.prompts if not p.assistant_prefix) == sorted(
      f'q{i}' for i in range(3, 10))
  assert [p.text for p in again.prompts if p.assistant_prefix] == ['q3', 'q6', 'q9']
  assert again.calls == 3 + 3  # 3 batches of 7 ids, each with one follow-up call
  assert scores.summary['accuracy'] == 100.0 and scores.summary['throughput']['generated'] == 7
  records = [json.loads(line) for line in open(os.path.join(workdir, 'responses.jsonl'))]
  assert sorted(r['id'] for r in records) == list(range(10))
  assert records[1] == {'id': 1, 'response': 'a1', 'odd': True}
  assert records[0] == {'id': 0, 'response': '?', 'follow_up': 'a0'}
  for name in ('summary.json', 'summary.md', 'summary.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, 'summary.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert '| accuracy | 100.0 |' in open(os.path.join(workdir, 'summary.md')).read()
  done = FakeResponder(_answer)
  evaluate(bench, done, workdir, batch_size=3, run_info={'data': 'toy'}, title='Toy', progress=False)
  assert done.calls == 0


def test_changed_settings_refuse_the_workdir(tmp_path):
  generate(ToyBench(2), FakeResponder(_answer), str(tmp_path), batch_size=2,
           run_info={'data': 'a'}, progress=False)
  with pytest.raises(ValueError, match="different run .*data: 'a' then, 'b' now"):
    generate(ToyBench(2), FakeResponder(_answer), str(tmp_path), batch_size=2,
             run_info={'data': 'b'}, progress=False)


class LongLastBench(ToyBench):
  """ToyBench whose last example needs a window of at least 10 tokens."""

  def prompt(self, index, responder):
    if index == self.n - 1 and responder.max_context_tokens < 10:
      raise ValueError(f'toy example {index} does not fit a window of {responder.max_context_tokens}')
    return super().prompt(index, responder)


def test_a_run_that_failed_before_answering_does_not_block_the_corrected_rerun(tmp_path):
  small = FakeResponder(_answer, max_context_tokens=5)
  with pytest.raises(ValueError, match='toy example 3 does not fit'):
    generate(LongLastBench(4), small, str(tmp_path), batch_size=2, run_info={'window': 5}, progress=False)
  assert small.calls == 0, 'every prompt is built before the model answers any'
  assert not os.path.exists(tmp_path / 'run_info.json')
  records, _ = generate(LongLastBench(4), FakeResponder(_answer, max_context_tokens=50), str(tmp_path),
                        batch_size=2, run_info={'window': 50}, progress=False)
  assert [r['id'] for r in records] == [0, 1, 2, 3]
  assert json.load(open(tmp_path / 'run_info.json')) == {'window': 50}


def test_run_info_left_by_a_run_without_responses_is_replaced(tmp_path):
  (tmp_path / 'run_info.json').write_text(json.dumps({'window': 5}))
  generate(ToyBench(2), FakeResponder(_answer), str(tmp_path), batch_size=2, run_info={'window': 50},
           progress=False)
  assert json.load(open(tmp_path / 'run_info.json')) == {'window': 50}


def test_partial_last_line_is_dropped(tmp_path):
  path = tmp_path / 'responses.jsonl'
  path.write_text('{"id": 0, "response": "a0"}\n{"id": 1, "resp')
  log = ResponseLog(str(path), 3)
  assert list(log.done) == [0]
  assert path.read_text() == '{"id": 0, "response": "a0"}\n'
  log.append([{'id': 1, 'response': 'a1'}])
  assert sorted(ResponseLog(str(path), 3).done) == [0, 1]


def test_response_log_from_another_run_is_an_error(tmp_path):
  path = tmp_path / 'responses.jsonl'
  path.write_text('{"id": 5, "response": "x"}\n')
  with pytest.raises(ValueError, match='outside 0..2'):
    ResponseLog(str(path), 3)


def test_read_responses_lists_missing_duplicate_and_unknown_ids(tmp_path):
  path = tmp_path / 'r.jsonl'
  ids = [0, 1, 1, 4, 5, 9, 12, -1]
  path.write_text(''.join(json.dumps({'id': i, 'response': 'x'}) + '\n' for i in ids))
  with pytest.raises(ValueError) as e:
    read_responses(str(path), 10)
  msg = str(e.value)
  assert 'missing ids (5): 2-3, 6-8' in msg
  assert 'duplicate ids (1): 1' in msg
  assert 'ids not in the data (0..9) (2): -1, 12' in msg


@pytest.mark.parametrize('line,match', [
    ('{"id": "0", "response": "x"}', '"id" must be an integer'),
    ('{"id": 0, "response": null}', '"response" must be a string'),
    ('{"id": 0, "response": "x"', 'line 1 is not JSON'),
    ('[0, "x"]', 'expected an object'),
])
def test_read_responses_names_the_bad_line(tmp_path, line, match):
  path = tmp_path / 'r.jsonl'
  path.write_text(line + '\n')
  with pytest.raises(ValueError, match=match):
    read_responses(str(path), 1)


def test_score_file_sorts_by_id_and_writes_reports(tmp_path):
  path = tmp_path / 'r.jsonl'
  path.write_text('{"id": 1, "response": "a1"}\n{"id": 0, "response": "wrong"}\n')
  scores = score_file(ToyBench(2), str(path), str(tmp_path / 'out'), title='Toy')
  assert scores.summary == {'accuracy': 50.0, 'n': 2}
  assert json.load(open(tmp_path / 'out' / 'summary.json')) == scores.summary


def test_format_ids():
  assert format_ids([7, 0, 1, 2, 5, 8]) == '0-2, 5, 7-8'
  assert format_ids([]) == ''
