"""The smoke setting: a synthetic knowledge base, StructEval data over it in the released v1 format, and two scripted
responders that StructEval's mastery views must tell apart although plain seed accuracy cannot.

The knowledge base holds invented creatures and places. A creature has a colour, a diet, a length (cm) and a habitat
(a place); a place has a climate and a region. A fact is an (entity, attribute) pair. Each creature is one seed
("where does it live?"), with one Bloom question per level built from templates (remembering: an attribute lookup;
understanding: the description that fits; applying: a rule applied to its length; analyzing: comparing two creatures;
evaluating: the longest of four; creating: a cross of two creatures) and two concept questions on its habitat. The
right option sits at a random letter. Every question records the facts it needs, which stands in for the RAG
filter's check that it is answerable from the knowledge base.

`Memoriser` knows the seed answers only (a contaminated model); `Knower` knows each fact with probability p and
answers a question right when it knows every fact the question needs. Both guess a seeded random letter otherwise.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import re
import zlib
from collections.abc import Sequence

import numpy as np

from experiments.structeval.data import LETTERS
from mmjax.evals.choice import parse_options
from mmjax.evals.prompt import Prompt

COLOURS = ('red', 'blue', 'green', 'amber', 'violet', 'grey', 'white', 'black')
DIETS = ('seeds', 'insects', 'fish', 'moss', 'fruit', 'leaves', 'worms', 'nectar')
CLIMATES = ('arid', 'tropical', 'polar', 'temperate', 'alpine', 'monsoon')
REGIONS = ('the north', 'the south', 'the east', 'the west', 'the coast', 'the highlands')
_SYLLABLES = ('ka', 'lo', 'mi', 'zu', 'tor', 'ven', 'shi', 'ra', 'bel', 'quo', 'nix', 'dra', 'pel', 'ost', 'um')
_QUESTION = re.compile(r'Question: (.*?)\nA\. ', re.S)

Key = tuple[str, tuple[str, ...]]  # (question, its option texts sorted): the same however the options are shuffled


@dataclasses.dataclass(frozen=True)
class SyntheticStruct:
  """A written synthetic set. path: the struct file; facts: (entity, attribute) -> value; questions: key ->
  (the facts it needs, the right option text); seed_keys: the keys of the seed questions."""
  path: str
  facts: dict[tuple[str, str], object]
  questions: dict[Key, tuple[tuple[tuple[str, str], ...], str]]
  seed_keys: frozenset


def _names(rng: np.random.Generator, n: int, suffix: str, taken: set[str]) -> list[str]:
  out = []
  while len(out) < n:
    name = ''.join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=3)).capitalize() + suffix
    if name not in taken:
      taken.add(name)
      out.append(name)
  return out


def _pick(rng: np.random.Generator, pool: Sequence, right, n: int = 3) -> list:
  others = [x for x in pool if x != right]
  return [others[int(i)] for i in rng.choice(len(others), n, replace=False)]


class _Writer:
  def __init__(self, rng: np.random.Generator):
    self.rng = rng
    self.questions: dict[Key, tuple[tuple[tuple[str, str], ...], str]] = {}

  def mcq(self, question: str, right: str, wrong: Sequence[str], facts: Sequence[tuple[str, str]]) -> dict:
    """{question, A-D, answer} with `right` at a random letter; records the facts it needs."""
    texts = [str(w) for w in wrong]
    if len(set(texts + [right])) != 4:
      raise ValueError(f'{question!r}: options {[right] + texts} are not four distinct texts')
    at = int(self.rng.integers(4))
    texts.insert(at, right)
    self.questions[(question, tuple(sorted(texts)))] = (tuple(facts), right)
    return {'question': question, **dict(zip(LETTERS, texts)), 'answer': LETTERS[at]}


def write_synthetic_struct(folder: str, *, seed: int = 0, creatures: int = 40, places: int = 8) -> SyntheticStruct:
  """Writes folder/struct_synthetic/test_v1_synthetic.json (one seed per creature, 6 Bloom + 2 concept questions
  each) and returns it with its knowledge base."""
  if creatures < 4 or places < 4:
    raise ValueError(f'the synthetic set needs >= 4 creatures and places (four options), got {creatures}, {places}')
  rng = np.random.default_rng(seed)
  taken: set[str] = set()
  beasts, lands = _names(rng, creatures, '', taken), _names(rng, places, ' Vale', taken)
  lengths = rng.permutation(np.arange(10, 10 + 5 * creatures, 5))  # distinct, so that comparisons have one answer
  facts: dict[tuple[str, str], object] = {}
  for land in lands:
    facts[(land, 'climate')] = CLIMATES[int(rng.integers(len(CLIMATES)))]
    facts[(land, 'region')] = REGIONS[int(rng.integers(len(REGIONS)))]
  for b, length in zip(beasts, lengths):
    facts[(b, 'colour')] = COLOURS[int(rng.integers(len(COLOURS)))]
    facts[(b, 'diet')] = DIETS[int(rng.integers(len(DIETS)))]
    facts[(b, 'length')] = int(length)
    facts[(b, 'habitat')] = lands[int(rng.integers(len(lands)))]
  w = _Writer(rng)

  def looks(colour: str, diet: str) -> str:
    return f'a {colour} animal that eats {diet}'

  seeds = []
  for b in beasts:
    other = beasts[(beasts.index(b) + 1 + int(rng.integers(len(beasts) - 1))) % len(beasts)]
    colour, diet, length, home = (facts[(b, a)] for a in ('colour', 'diet', 'length', 'habitat'))
    seed_q = w.mcq(f'In which place does the {b} live?', home, _pick(rng, lands, home), [(b, 'habitat')])
    rivals = _pick(rng, beasts, b)
    longest = max([b] + rivals, key=lambda x: facts[(x, 'length')])
    mixed = looks(colour, facts[(other, 'diet')])
    bloom = {
        'remembering': w.mcq(f'What colour is the {b}?', colour, _pick(rng, COLOURS, colour), [(b, 'colour')]),
        'understanding': w.mcq(f'Which description fits the {b}?', looks(colour, diet),
                               [looks(colour, _pick(rng, DIETS, diet, 1)[0]),
                                looks(_pick(rng, COLOURS, colour, 1)[0], diet),
                                looks(*_pick(rng, COLOURS, colour, 1), *_pick(rng, DIETS, diet, 1))],
                               [(b, 'colour'), (b, 'diet')]),
        'applying': w.mcq(f'A cage must be twice as long as its animal. How long (cm) must the cage of the {b} be?',
                          str(2 * length), [str(length), str(3 * length), str(2 * length + 5)], [(b, 'length')]),
        'analyzing': w.mcq(f'Which is longer, the {b} or the {other}?',
                           f'the {b}' if length > facts[(other, 'length')] else f'the {other}',
                           [f'the {other}' if length > facts[(other, 'length')] else f'the {b}',
                            'both are equally long', 'neither can be measured'], [(b, 'length'), (other, 'length')]),
        'evaluating': w.mcq(f'Of the {b} and three other creatures, which is the longest?', f'the {longest}',
                            [f'the {x}' for x in [b] + rivals if x != longest],
                            [(x, 'length') for x in [b] + rivals]),
        'creating': w.mcq(f'A breeder crosses the {b} with the {other}, keeping the colour of the {b} and the diet of '
                          f'the {other}. What is the offspring?', mixed,
                          [looks(colour, d) for d in _pick(rng, DIETS, facts[(other, 'diet')])],
                          [(b, 'colour'), (other, 'diet')]),
    }
    concepts = [w.mcq(f'What is the climate of {home}?', facts[(home, 'climate')],
                      _pick(rng, CLIMATES, facts[(home, 'climate')]), [(home, 'climate')]),
                w.mcq(f'In which region lies {home}?', facts[(home, 'region')],
                      _pick(rng, REGIONS, facts[(home, 'region')]), [(home, 'region')])]
    seeds.append({
        'question': seed_q['question'], 'choices': [seed_q[k] for k in LETTERS],
        'answer': LETTERS.index(seed_q['answer']), 'subject': 'zoology',
        'bloom_questions': [{'level': lv, **q, 'topic_wiki_name': b, 'topic_wiki_id': str(beasts.index(b))}
                            for lv, q in bloom.items()],
        'concept_questions': [{**q, 'concept_wiki_name': home, 'concept_wiki_id': str(1000 + lands.index(home))}
                              for q in concepts]})
  path = os.path.join(folder, 'struct_synthetic', 'test_v1_synthetic.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(seeds, f, indent=1)
  seed_keys = frozenset((s['question'], tuple(sorted(s['choices']))) for s in seeds)
  return SyntheticStruct(path, facts, w.questions, seed_keys)


def question_key(prompt: Prompt) -> tuple[Key, dict[str, str]]:
  """(the question's key, its options) from a chat prompt (prompts.chat_prompt)."""
  m = _QUESTION.search(prompt.text)
  if m is None:
    raise ValueError(f'not a StructEval chat prompt: {prompt.text[:80]!r}')
  block = prompt.text[m.end() - 3:].rsplit('\nAnswer:', 1)[0]  # the four option lines
  options = {k: v for k, v in parse_options(block).items() if k in LETTERS}
  return (m.group(1), tuple(sorted(options.values()))), options


class _Scripted(abc.ABC):
  """A Responder that answers from a rule, else a letter picked by a CRC of the prompt and the seed."""
  max_context_tokens = 1_000_000

  def __init__(self, kb: SyntheticStruct, seed: int):
    self.kb = kb
    self.seed = seed

  def count_tokens(self, prompt: Prompt) -> int:
    return len(prompt.text) // 4

  @abc.abstractmethod
  def knows(self, key: Key) -> bool:
    """Whether it answers the question of `key` right."""

  def _answer(self, prompt: Prompt) -> str:
    key, options = question_key(prompt)
    if key in self.kb.questions and self.knows(key):
      right = self.kb.questions[key][1]
      return next(k for k, v in options.items() if v == right)
    return LETTERS[zlib.crc32(f'{self.seed}\0{prompt.text}'.encode()) % 4]

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    return [self._answer(p) for p in prompts]


class Memoriser(_Scripted):
  """Knows the answers of the seed questions and nothing else."""

  def knows(self, key: Key) -> bool:
    return key in self.kb.seed_keys


class Knower(_Scripted):
  """Knows each fact of the knowledge base with probability p (drawn once, seeded) and answers a question right when
  it knows every fact the question needs."""

  def __init__(self, kb: SyntheticStruct, p: float, seed: int):
    super().__init__(kb, seed)
    rng = np.random.default_rng(seed)
    self.known = {fact for fact in sorted(kb.facts, key=str) if rng.random() < p}

  def knows(self, key: Key) -> bool:
    return all(fact in self.known for fact in self.kb.questions[key][0])
