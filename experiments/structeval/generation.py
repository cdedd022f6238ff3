"""StructEval's generation pipeline (spec section 2) with a local LM through mmjax.generate or an OpenAI-compatible
endpoint, writing the released v1 format.

Per seed (a four-option question with its answer):
1. test objective: a 3-shot prompt asks for the seed's `Topic:` and `Description:` (retried up to 10 times);
2. retrieval (retrieval.py): BM25 over a local page corpus for the topic, 256-token chunks, reranked against the seed
   question by the local model's log-probability, the top 3 joined into the document; an LM check that the page
   matches the topic (a seed that fails is dropped);
3. Bloom questions: one prompt per level (the six levels) asks for 5 hard single-answer questions answerable from
   the document, three plausible distractors, no reference to "the document" in the question, an explanation that
   cites it; JSON out, re-asked up to 5 times on a parse error; leftover "according to the document" phrases are
   stripped by regexes;
4. concepts: a 3-shot prompt lists up to 5 entities needed to answer the seed; each is retrieved and match-checked
   like the topic and gets 3 questions (with the seed and its answer in the prompt);
5. the RAG filter: the right option moves to a uniformly random letter (it swaps places with the option there) and
   a judge (temperature 0) answers from the document; "I cannot answer" or another letter drops the item.
Ids are the generator's: '<seed>-bloom-<level key>-<k>' and '<seed>-concept-<entity>-<k>' (entity: the concept's
position in the listed entities), k numbering a level's or an entity's candidates before the filter (so kept ids
may skip numbers), written as each question's `question_idx` (data.py reads it). A finished seed is written to
<out>.parts/<seed>.part (JSON), so a rerun skips it; the output file, a JSON list of v1 seed records, and
<out>.report (JSON counts) are rewritten from the parts at the end of every run (not named *.json, so that a folder
of struct files stays readable by data.load_struct).

The v1 difficulty filter (`difficulty_filter`) then asks a pool of models every item (the official zero-shot chat
prompt) and drops the items more than `max_correct` of them answer (12 of 18 for v1).

An LM is any callable `prompts -> completions` (None: a failed request): `MmjaxLM` (a local mmjax decoder, also the
reranker's `logprob` scorer) or mmjax.evals.openai_client.OpenAIChatGenerator (the question writer at temperature
0.7, the judge at 0). The released code sends prompts as an assistant-role message; both send a user turn.

  # a local model writes, judges and reranks; rerun the same command to resume (settings: GENERATION_DEFAULTS)
  python launch.py --config configs/structeval.py --mode generate_struct --workdir runs/gen_obqa \
      --config.checkpoint=/models/Qwen2-7B-Instruct --config.generation.seeds=/data/obqa/0_test_with_idx.json \
      --config.generation.corpus=/data/enwiki_pages.jsonl
  # an OpenAI-compatible endpoint writes and judges (key from $OPENAI_API_KEY), a local model reranks, and a pool
  # of local models filters by difficulty into runs/gen_obqa_api/v1/
  python launch.py --config configs/structeval.py --mode generate_struct --workdir runs/gen_obqa_api \
      --config.checkpoint=/models/Qwen2-0.5B --config.generation.seeds=/data/obqa/0_test_with_idx.json \
      --config.generation.corpus=/data/enwiki_pages.jsonl --config.generation.api_url=http://localhost:8000/v1 \
      --config.generation.api_model=gpt-4o-mini --config.generation.api_key_env=OPENAI_API_KEY \
      --config.generation.pool='/models/a;/models/b;/models/c' --config.generation.max_correct=2
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.structeval import prompts as official_prompts, settings
from experiments.structeval.data import LETTERS, LEVEL_KEYS, LEVELS, Seed, StructItem
from experiments.structeval.retrieval import Retrieved, Retriever
from mmjax.data.chat_masking import END_OF_TURN, render_chat
from mmjax.evals.choice import match_choice
from mmjax.generate import generate, score

LM = Callable[[Sequence[str]], Sequence['str | None']]
LEVEL_RULES = {
    'remembering': 'recall facts, terms and basic concepts stated in the document',
    'understanding': 'explain ideas or concepts: interpret, summarise, classify or compare their meaning',
    'applying': 'use the information in a new concrete situation: solve a problem or carry out a procedure',
    'analyzing': 'break the information into parts and find relations: causes, evidence, structure',
    'evaluating': 'judge or justify a decision or position against criteria drawn from the document',
    'creating': 'combine elements into a new pattern: design, plan or predict an outcome that follows from them',
}
MAX_CONCEPTS = 5
BLOOM_PER_LEVEL = 5
PER_CONCEPT = 3
CANNOT = 'I cannot answer'
# Our own three worked examples for the 3-shot prompts: (seed, topic, description, entities [(name, why)]).
FEW_SHOT = (
    (Seed('Which gas do plants take in to make their food?', ('oxygen', 'carbon dioxide', 'nitrogen', 'helium'), 1),
     'Photosynthesis', 'How green plants turn light, water and carbon dioxide into sugar and oxygen.',
     (('Photosynthesis', 'the process the question is about'), ('Carbon dioxide', 'the gas plants absorb'))),
    (Seed('What is the derivative of x^3?', ('3x^2', 'x^2', '3x', 'x^4 / 4'), 0), 'Power rule',
     'The rule of calculus that differentiates powers of a variable: d/dx x^n = n x^(n-1).',
     (('Derivative', 'what the question asks for'), ('Power rule', 'the rule that gives the answer'))),
    (Seed('Which layer of the Earth is liquid?', ('crust', 'mantle', 'outer core', 'inner core'), 2),
     'Structure of the Earth', 'The layers of the Earth from the crust to the inner core and their physical states.',
     (('Earth\'s outer core', 'the liquid layer'), ('Mantle', 'a distractor layer to tell apart'),
      ('Inner core', 'the solid layer below it'))),
)
_FIELD_LINE = r'^[ \t>*#-]*{}[ \t*]*:[ \t*]*(.+?)[ \t*]*$'
_TOPIC = re.compile(_FIELD_LINE.format('topic'), re.I | re.M)
_DESCRIPTION = re.compile(_FIELD_LINE.format('description'), re.I | re.M)
_ENTITY = re.compile(r'^[ \t]*(?:[-*•]|\d+[.)])[ \t]*\**([^:\n*]+?)\**[ \t]*:[ \t]*(.+?)[ \t]*$', re.M)
_FENCE = re.compile(r'```(?:json)?', re.I)
_DOC = (r'(?:given |provided |above |following |reference |retrieved )?'
        r'(?:document|passage|text|article|context|excerpt)s?')
# Leftover references to the source the released regex list strips (our own list, same intent).
STRIP_PATTERNS = tuple(re.compile(rf'(?:,\s*)?\b{p}\b(?:\s*[,:])?', re.I) for p in (
    rf'(?:according to|as (?:mentioned|stated|described|noted|discussed|explained|shown|indicated|outlined) in|'
    rf'based on|as per|in light of|drawing on|referring to) (?:the|this|that) {_DOC}',
    rf'(?:as|which is) (?:mentioned|stated|described|noted|discussed|explained|shown|indicated|outlined)'
    rf' (?:in|by) (?:the|this|that) {_DOC}',
    rf'(?:in|within|from) (?:the|this|that) {_DOC}',
))


def format_seed(seed: Seed, with_answer: bool = True) -> str:
  """'Question: ...', the lettered choices and (with_answer) 'Answer: X. <text>'."""
  lines = [f'Question: {seed.question}'] + [f'{k}. {c}' for k, c in zip(LETTERS, seed.choices)]
  if with_answer:
    lines.append(f'Answer: {LETTERS[seed.answer]}. {seed.choices[seed.answer]}')
  return '\n'.join(lines)


def objective_prompt(seed: Seed) -> str:
  """The 3-shot test-objective prompt: the reply is two lines, 'Topic: ...' and 'Description: ...'."""
  shots = '\n\n'.join(f'{format_seed(s)}\nTopic: {t}\nDescription: {d}' for s, t, d, _ in FEW_SHOT)
  return ('Find the core topic a multiple-choice question tests: the knowledge one needs to answer it, as the title '
          'of an encyclopedia page, and a one-sentence description. Reply with two lines, "Topic:" and '
          f'"Description:", as in the examples.\n\n{shots}\n\n{format_seed(seed)}\n')


def parse_objective(text: str | None) -> tuple[str, str] | None:
  """(topic, description) from a reply, or None when either line is missing or empty."""
  topic, description = _TOPIC.search(text or ''), _DESCRIPTION.search(text or '')
  if not topic or not description:
    return None
  return topic.group(1).strip(), description.group(1).strip()


def concept_prompt(seed: Seed) -> str:
  """The 3-shot concept-listing prompt: up to MAX_CONCEPTS entities, one a line, '- <name>: <why it is needed>'."""
  shots = '\n\n'.join(format_seed(s) + '\nEntities:\n' + '\n'.join(f'- {n}: {w}' for n, w in es)
                      for s, _, _, es in FEW_SHOT)
  return (f'List the most important entities (at most {MAX_CONCEPTS}) one needs to know to answer a multiple-choice '
          'question, each an encyclopedia page title, one a line as "- <name>: <why it is needed>", as in the '
          f'examples.\n\n{shots}\n\n{format_seed(seed)}\nEntities:\n')


def parse_concepts(text: str | None) -> list[tuple[str, str]]:
  """Up to MAX_CONCEPTS (name, description) pairs from a reply, first mention of a name kept."""
  out: dict[str, tuple[str, str]] = {}
  for m in _ENTITY.finditer(text or ''):
    name = m.group(1).strip()
    out.setdefault(name.lower(), (name, m.group(2).strip()))
  return list(out.values())[:MAX_CONCEPTS]


def match_prompt(topic: str, description: str, retrieved: Retrieved) -> str:
  """Asks whether the retrieved page is about the topic; the reply starts with yes or no."""
  return (f'Topic: {topic}\nDescription: {description}\n\nPage title: {retrieved.page.title}\nPage excerpt:\n'
          f'{retrieved.document}\n\nIs this page about the topic? Reply "yes" or "no".')


def matches(reply: str | None) -> bool:
  """Whether a match-check reply says yes (its first word)."""
  first = re.findall(r'[a-z]+', (reply or '').lower())
  return bool(first) and first[0] == 'yes'


_JSON_RULES = ('Reply with a JSON list of objects with the keys "level", "question", "A", "B", "C", "D", "answer" (the '
               'letter of the correct option) and "explanation", and nothing else.')
_QUALITY_RULES = ('Each question has exactly one correct option; the three other options are plausible, wrong, and '
                  'resemble the correct one in form and length. The question must make sense on its own: do not '
                  'refer to the document (no "according to the document" or "in the passage"). The explanation cites '
                  'the sentence of the document that gives the answer.')


def bloom_prompt(level: str, topic: str, description: str, document: str, n: int = BLOOM_PER_LEVEL) -> str:
  """The question prompt of a Bloom level (one of data.LEVELS)."""
  return (f'Document:\n{document}\n\nTopic: {topic}\nDescription: {description}\n\nWrite {n} hard single-choice '
          f'questions with four options about the topic at the "{level}" level of Bloom\'s taxonomy: questions that '
          f'ask the student to {LEVEL_RULES[level]}. Each must be answerable from the document. {_QUALITY_RULES} '
          f'{_JSON_RULES} "level" is "{level}".')


def concept_question_prompt(seed: Seed, concept: str, document: str, n: int = PER_CONCEPT) -> str:
  """The prompt for the questions on a concept the seed depends on."""
  return (f'Document:\n{document}\n\nA student answered this question:\n{format_seed(seed)}\n\nWrite {n} hard '
          f'single-choice questions with four options about "{concept}", a concept one needs to answer it. Each '
          f'must be answerable from the document. {_QUALITY_RULES} {_JSON_RULES} "level" is "concept".')


def parse_questions(text: str | None) -> list[dict[str, str]] | None:
  """The well-formed questions of a JSON reply ({question, A-D, answer (a letter), explanation}), or None when no
  JSON list or object parses (the caller asks again). A list, one object or {"questions": [...]} is accepted;
  entries without a question, four options or a letter answer are dropped."""
  text = _FENCE.sub('', text or '')
  decoder, found = json.JSONDecoder(), None
  for m in re.finditer(r'[\[{]', text):
    try:
      found = decoder.raw_decode(text, m.start())[0]
      break
    except json.JSONDecodeError:
      continue
  if found is None:
    return None
  if isinstance(found, dict):
    found = found.get('questions', [found])
  out = []
  for q in found if isinstance(found, list) else []:
    if not isinstance(q, dict):
      continue
    fields = {k: q.get(k) for k in ('question', *LETTERS)}
    answer = str(q.get('answer', '')).strip().strip('().').upper()[:1]
    if all(isinstance(v, str) and v.strip() for v in fields.values()) and answer in LETTERS:
      out.append({**{k: v.strip() for k, v in fields.items()}, 'answer': answer,
                  'explanation': str(q.get('explanation', '')).strip()})
  return out


def strip_phrases(text: str) -> str:
  """The text without references to the source document ("According to the document, ..."); a text that loses one
  is recapitalised, any other is returned as it was."""
  stripped = text
  for pattern in STRIP_PATTERNS:
    stripped = pattern.sub(' ', stripped)
  if stripped == text:
    return text
  stripped = re.sub(r'\s+([?.,;:!])', r'\1', re.sub(r'[ \t]{2,}', ' ', stripped)).strip()
  return stripped[:1].upper() + stripped[1:]


def move_answer(question: dict, letter: str) -> dict:
  """The question with its right option at `letter`: the right option and the one at `letter` swap places."""
  old = question['answer']
  moved = {**question, 'answer': letter}
  moved[letter], moved[old] = question[old], question[letter]
  return moved


def judge_prompt(document: str, question: dict) -> str:
  """The RAG filter's prompt: the document, the question, and the rule to answer a letter or 'I cannot answer'."""
  options = '\n'.join(f'{k}. {question[k]}' for k in LETTERS)
  return (f'Document:\n{document}\n\nAnswer the question from the document with the letter of the correct option '
          f'only. If the document does not give the answer, or more than one option is correct, reply "{CANNOT}".'
          f'\n\nQuestion: {question["question"]}\n{options}\nAnswer:')


def judged(reply: str | None, question: dict) -> str | None:
  """The letter a judge's reply picks, or None for a failed request, 'I cannot answer' or no letter."""
  if reply is None or 'cannot answer' in reply.lower():
    return None
  return match_choice(reply, {k: question[k] for k in LETTERS})


def rag_filter(questions: Sequence[dict], documents: Sequence[str], judge: LM,
               rng: np.random.Generator) -> list[dict]:
  """The questions that the judge answers right from their documents, each with its right option first moved to a
  uniformly random letter (one judge call for all)."""
  moved = [move_answer(q, LETTERS[int(rng.integers(4))]) for q in questions]
  replies = judge([judge_prompt(d, q) for q, d in zip(moved, documents)]) if moved else []
  return [q for q, r in zip(moved, replies) if judged(r, q) == q['answer']]


def ask_json(lm: LM, prompts: Sequence[str], retries: int, counts: Counter) -> list[list[dict]]:
  """The parsed questions of each prompt, re-asking a prompt whose reply does not parse up to `retries` times
  ([] when it never does; counts['json_errors'] counts the bad replies)."""
  out: list[list[dict] | None] = [None] * len(prompts)
  todo = list(range(len(prompts)))
  for _ in range(retries + 1):
    if not todo:
      break
    for i, reply in zip(todo, lm([prompts[i] for i in todo])):
      out[i] = parse_questions(reply)
    counts['json_errors'] += sum(out[i] is None for i in todo)
    todo = [i for i in todo if out[i] is None]
  return [q or [] for q in out]


@dataclasses.dataclass
class Pipeline:
  """The per-seed generation (module docstring). lm writes (sampled, e.g. temperature 0.7); judge answers the RAG
  filter (temperature 0; the lm's model is fine); retriever finds and reranks documents."""
  lm: LM
  judge: LM
  retriever: Retriever
  seed: int = 0
  objective_retries: int = 10
  json_retries: int = 5
  per_level: int = BLOOM_PER_LEVEL
  per_concept: int = PER_CONCEPT
  levels: tuple[str, ...] = LEVELS

  def _ask(self, prompt: str, parse: Callable, retries: int) -> Any:
    for _ in range(retries):
      got = parse(self.lm([prompt])[0])
      if got:
        return got
    return None

  def _checked(self, topic: str, description: str, question: str) -> Retrieved | None:
    found = self.retriever.retrieve(topic, question)
    if found is None or not matches(self.lm([match_prompt(topic, description, found)])[0]):
      return None
    return found

  def seed_record(self, seed: Seed, number: int) -> tuple[dict | None, Counter]:
    """(the v1 record of one seed, or None when it is dropped; the counts of what happened)."""
    counts: Counter = Counter()
    rng = np.random.default_rng([self.seed, number])
    objective = self._ask(objective_prompt(seed), parse_objective, self.objective_retries)
    if objective is None:
      counts['dropped_no_objective'] += 1
      return None, counts
    topic, description = objective
    found = self._checked(topic, description, seed.question)
    if found is None:
      counts['dropped_topic_mismatch'] += 1
      return None, counts
    candidates = []  # (question with question_idx and wiki fields, document)
    asked = ask_json(self.lm, [bloom_prompt(lv, topic, description, found.document, self.per_level)
                               for lv in self.levels], self.json_retries, counts)
    for level, qs in zip(self.levels, asked):
      candidates += [({**self._clean(q), 'level': level, 'topic_wiki_name': found.page.title,
                       'topic_wiki_id': found.page.id, 'question_idx': f'{number}-bloom-{LEVEL_KEYS[level]}-{k}'},
                      found.document) for k, q in enumerate(qs[:self.per_level])]
    concepts = self._ask(concept_prompt(seed), parse_concepts, 1) or []
    counts['concepts'] += len(concepts)
    docs = [self._checked(name, why, seed.question) for name, why in concepts]
    counts['concepts_mismatched'] += sum(d is None for d in docs)
    kept = [(e, name, d) for e, ((name, _), d) in enumerate(zip(concepts, docs)) if d is not None]
    asked = ask_json(self.lm, [concept_question_prompt(seed, name, d.document, self.per_concept)
                               for _, name, d in kept], self.json_retries, counts)
    for (e, _, d), qs in zip(kept, asked):
      candidates += [({**self._clean(q), 'concept_wiki_name': d.page.title, 'concept_wiki_id': d.page.id,
                       'question_idx': f'{number}-concept-{e}-{k}'}, d.document)
                     for k, q in enumerate(qs[:self.per_concept])]
    counts['candidates'] += len(candidates)
    passed = rag_filter([q for q, _ in candidates], [d for _, d in candidates], self.judge, rng)
    bloom = [q for q in passed if 'level' in q]
    concept = [q for q in passed if 'level' not in q]
    counts.update(kept_bloom=len(bloom), kept_concept=len(concept), seeds_kept=1)
    record = {'question': seed.question, 'choices': list(seed.choices), 'answer': seed.answer,
              'subject': seed.subject, 'idx': number, 'bloom_questions': bloom, 'concept_questions': concept}
    return record, counts

  @staticmethod
  def _clean(q: dict) -> dict:
    return {'question': strip_phrases(q['question']), **{k: strip_phrases(q[k]) for k in LETTERS},
            'answer': q['answer']}


def _write_json(path: str, value: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


def generate_struct(pipeline: Pipeline, seeds: Sequence[Seed], out_path: str,
                    progress: Callable[[int, int], None] | None = None) -> dict:
  """Runs the pipeline over the seeds and writes out_path (a JSON list of v1 records, the seeds kept in order) and
  <out_path>.report; returns the report. A seed's number is its `idx`, else its position. Resumable: each finished
  seed (kept or dropped) is saved to <out_path>.parts/<number>.part and not generated again."""
  numbers = [i if s.idx is None else s.idx for i, s in enumerate(seeds)]
  if len(set(numbers)) != len(numbers):
    raise ValueError(f'{out_path}: seed idx values repeat; each seed needs its own idx (or none)')
  parts = out_path + '.parts'
  os.makedirs(parts, exist_ok=True)
  records, counts, generated = [], Counter(), 0
  for done, (seed, number) in enumerate(zip(seeds, numbers)):
    part = os.path.join(parts, f'{number}.part')
    if not os.path.exists(part):
      record, seed_counts = pipeline.seed_record(seed, number)
      _write_json(part, {'record': record, 'counts': dict(seed_counts)})
      generated += 1
    with open(part, encoding='utf-8') as f:
      saved = json.load(f)
    counts.update(saved['counts'])
    if saved['record'] is not None:
      records.append(saved['record'])
    if progress:
      progress(done + 1, len(seeds))
  _write_json(out_path, records)
  report = {'seeds': len(seeds), 'generated_this_run': generated, **{k: counts[k] for k in sorted(counts)}}
  _write_json(out_path + '.report', report)
  return report


def _chat_item(record: dict, q: dict) -> StructItem:
  subject = record.get('subject', '')
  return StructItem('', f'struct/{subject}' if subject else 'struct', 0, 'bloom', q['question'],
                    {k: q[k] for k in LETTERS}, q['answer'])


def difficulty_filter(records: Sequence[dict], pool: Sequence[LM], max_correct: int) -> tuple[list[dict], dict]:
  """(the records without the items that more than max_correct of the pool's models answer right, a report).
  pool is iterated once (its models may load in turn).

  Each model answers every Bloom and concept item in the official zero-shot chat prompt (prompts.chat_prompt); its
  answer is the first option letter (mmjax.evals.choice.match_choice)."""
  items = [(i, key, j) for i, r in enumerate(records) for key in ('bloom_questions', 'concept_questions')
           for j in range(len(r[key]))]
  texts = [official_prompts.chat_prompt(_chat_item(records[i], records[i][key][j])) for i, key, j in items]
  right = np.zeros(len(items), np.int64)
  for model in pool:
    for n, (reply, (i, key, j)) in enumerate(zip(model(texts), items)):
      q = records[i][key][j]
      right[n] += reply is not None and match_choice(reply, {k: q[k] for k in LETTERS}) == q['answer']
  drop = {(i, key, j) for (i, key, j), r in zip(items, right) if r > max_correct}
  out = [{**r, **{key: [q for j, q in enumerate(r[key]) if (i, key, j) not in drop]
                  for key in ('bloom_questions', 'concept_questions')}} for i, r in enumerate(records)]
  return out, {'items': len(items), 'dropped': len(drop), 'pool': len(pool), 'max_correct': max_correct,
               'correct_histogram': np.bincount(right, minlength=len(pool) + 1).tolist()}


class MmjaxLM:
  """An mmjax decoder as an LM (`prompts -> completions` through mmjax.generate.generate) and as the reranker's
  scorer (`logprob`: summed log p(continuation | context) through mmjax.generate.score).

  tokenizer: a `tokenizers.Tokenizer`; chat_template: 'chatml' / 'llama3' renders each prompt as a user turn, None
  feeds the raw text (a base model). Prompts longer than the window lose their oldest tokens. With temperature > 0
  the k-th prompt this LM answers draws from stream (seed, k), so a run is reproducible.
  """

  def __init__(self, module: Any, params: Any, tokenizer: Any, *, max_new_tokens: int = 512,
               temperature: float = 0.0, seed: int = 0, chat_template: str | None = None,
               eos_token_id: Sequence[int] = (), batch_size: int = 8):
    self.module, self.params, self.tokenizer = module, params, tokenizer
    self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
    self.chat_template, self.batch_size, self.answered = chat_template, batch_size, 0
    end = tokenizer.token_to_id(END_OF_TURN[chat_template]) if chat_template else None
    self.eos_token_id = tuple(dict.fromkeys(tuple(eos_token_id) + (() if end is None else (end,))))

  def render(self, prompt: str) -> str:
    if self.chat_template is None:
      return prompt
    return render_chat([{'from': 'human', 'value': prompt}], template=self.chat_template, add_generation_prompt=True)

  def __call__(self, prompts: Sequence[str]) -> list[str]:
    out = []
    for first in range(0, len(prompts), self.batch_size):
      batch = [self.tokenizer.encode(self.render(p)).ids for p in prompts[first:first + self.batch_size]]
      ids = list(range(self.answered, self.answered + len(batch)))
      self.answered += len(batch)
      results = generate(self.module, self.params, batch, max_new_tokens=self.max_new_tokens,
                         temperature=self.temperature, seed=self.seed, request_ids=ids,
                         eos_token_id=self.eos_token_id or None, truncate='left')
      out += [self.tokenizer.decode(r[0].tokens, skip_special_tokens=True).strip() for r in results]
    return out

  def logprob(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
    """sum_t log p(continuation_t | context, continuation_<t) per pair (the continuation follows '\\n')."""
    out = []
    for first in range(0, len(contexts), self.batch_size):
      heads = [self.tokenizer.encode(c).ids or [0] for c in contexts[first:first + self.batch_size]]
      tails = [self.tokenizer.encode('\n' + c, add_special_tokens=False).ids
               for c in continuations[first:first + self.batch_size]]
      out += [float(np.sum(lp, dtype=np.float64))
              for lp in score(self.module, self.params, heads, tails, truncate='left')]
    return out


# The program's settings (configs/structeval.py's `generation` sub-dict overrides them): seeds, the seed file (a
# JSON list of {question, choices[4], answer 0-3, subject, idx}: processed_data/<bench>/0_<split>_with_idx.json or a
# dev.json); corpus, the JSONL pages; out, the output name in the workdir (default struct_test_<model>.json);
# api_url/api_model/api_key_env: an OpenAI-compatible endpoint that writes and judges (the key read from the named
# environment variable) instead of the local model; temperature and max_new_tokens of the writer; concurrency of
# the endpoint's requests; pool: ';'-separated checkpoints (HF directories) for the difficulty filter, '' for none,
# and max_correct, the most of them that may answer an item. The local model (config.checkpoint, config.base) always
# reranks the chunks.
GENERATION_DEFAULTS = settings.GENERATION  # configs/structeval.py's `generation` sub-dict overrides them


def _load(checkpoint: str, base: str, config: Any) -> Any:
  from mmjax.weights.load_model import load_model
  model = load_model(checkpoint, base or None, config.compute_dtype)
  if model.tokenizer is None:
    raise FileNotFoundError(f'{model.source}: no tokenizer.json; the generation pipeline needs one')
  model.tokenizer.no_truncation()
  model.tokenizer.no_padding()
  return model


def _lm(model: Any, config: Any, **kwargs: Any) -> MmjaxLM:
  return MmjaxLM(model.module, model.params, model.tokenizer, chat_template=config.chat_template or None,
                 eos_token_id=model.eos_token_id, batch_size=config.batch_size, seed=config.seed, **kwargs)


class _Pool:
  """The difficulty filter's models, each loaded when its turn comes (one in memory at a time)."""

  def __init__(self, checkpoints: Sequence[str], config: Any):
    self.checkpoints, self.config = list(checkpoints), config

  def __len__(self) -> int:
    return len(self.checkpoints)

  def __iter__(self):
    for c in self.checkpoints:
      yield _lm(_load(c, '', self.config), self.config, max_new_tokens=self.config.max_new_tokens)


def run_generate_struct(config: Any, workdir: str) -> dict:
  """`launch.py --mode generate_struct`: the pipeline over the seed file (settings: GENERATION_DEFAULTS, overridden
  by config.generation), then the difficulty filter when a pool is given. Writes workdir/<out> (resumable), its
  .report, and with a pool workdir/v1/<out> (the filtered set) with v1/<out>.report."""
  from experiments.structeval.data import read_dev
  from experiments.structeval.retrieval import read_corpus
  from mmjax.evals.openai_client import OpenAIChatGenerator
  s = {**GENERATION_DEFAULTS, **dict(config.get('generation') or {})}
  for key in ('seeds', 'corpus'):
    if not s[key]:
      raise ValueError(f'generate_struct: set --config.generation.{key} (see GENERATION_DEFAULTS in '
                       'experiments/structeval/generation.py)')
  if not config.checkpoint:
    raise ValueError('generate_struct: set --config.checkpoint to a local model (an HF directory): it reranks the '
                     'retrieved chunks, and writes and judges unless --config.generation.api_url is set')
  seeds, pages = read_dev(s['seeds']), read_corpus(s['corpus'])
  local = _load(config.checkpoint, config.base, config)
  judge_lm = _lm(local, config, max_new_tokens=16)
  if s['api_url']:
    if not s['api_model']:
      raise ValueError('generate_struct: set --config.generation.api_model, the model the endpoint serves')
    key = os.environ.get(s['api_key_env'], '') if s['api_key_env'] else ''
    writer = OpenAIChatGenerator(s['api_url'], s['api_model'], api_key=key, temperature=s['temperature'],
                                 max_tokens=s['max_new_tokens'], concurrency=s['concurrency'])
    judge = OpenAIChatGenerator(s['api_url'], s['api_model'], api_key=key, temperature=0.0, max_tokens=16,
                                concurrency=s['concurrency'])
    model_name = s['api_model']
  else:
    writer = _lm(local, config, max_new_tokens=s['max_new_tokens'], temperature=s['temperature'])
    judge, model_name = judge_lm, os.path.basename(os.path.normpath(config.checkpoint))
  name = s['out'] or f'struct_test_{re.sub(r"[^A-Za-z0-9._-]+", "-", model_name)}.json'
  os.makedirs(workdir, exist_ok=True)
  pipeline = Pipeline(writer, judge, Retriever(pages, judge_lm.logprob, tokenizer=judge_lm.tokenizer),
                      seed=config.seed)
  report = generate_struct(pipeline, seeds, os.path.join(workdir, name))
  if s['pool']:
    with open(os.path.join(workdir, name), encoding='utf-8') as f:
      records = json.load(f)
    pool = _Pool([c for c in s['pool'].split(';') if c], config)
    filtered, report['difficulty_filter'] = difficulty_filter(records, pool, s['max_correct'])
    os.makedirs(os.path.join(workdir, 'v1'), exist_ok=True)
    _write_json(os.path.join(workdir, 'v1', name), filtered)
    _write_json(os.path.join(workdir, 'v1', name + '.report'), report)
  return report
