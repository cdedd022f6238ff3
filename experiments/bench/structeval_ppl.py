"""StructEval PPL scoring throughput: mmjax (`experiments.structeval.ppl.PPLScorer`, through `mmjax.generate.score`)
against transformers (OpenCompass's way: the four whole strings per item in one padded forward pass), same weights,
same run, alternating calls.

  python -m experiments.bench.structeval_ppl            # small random Qwen2, 64 items, prefix 128, tails of 3 tokens
  python -m experiments.bench.structeval_ppl --quick    # fewer items, a shorter prefix

Items are token ids: a random prefix (the question and options) and four tails ('\\nAnswer: X'), so that tokenizing
is left out of both. Prints items/s of each (median of --repeats warm calls over all items; mmjax's first call,
compiling, is reported apart) and checks that both pick the same options.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
import transformers

from experiments.bench.timing import median_time
from experiments.structeval.ppl import PPLScorer
from mmjax.weights import from_pretrained

MODEL = dict(vocab_size=8000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True)


def torch_losses(hf, items: list[list[list[int]]], batch: int) -> np.ndarray:
  """[N, 4] OpenCompass losses: summed NLL of tokens 2..L / L, the four strings of `batch` items per forward."""
  out = []
  for first in range(0, len(items), batch):
    rows = [r for item in items[first:first + batch] for r in item]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
      ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    with torch.no_grad():
      logp = torch.log_softmax(hf(ids, attention_mask=mask).logits[:, :-1].float(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
    out.append((nll.sum(-1) / mask.sum(-1)).numpy().reshape(-1, 4))
  return np.concatenate(out)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=16, help='items per call (4 rows each)')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  n, prefix = (16, 64) if args.quick else (64, 128)
  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**MODEL, attn_implementation='eager')).eval()
  with tempfile.TemporaryDirectory() as directory:
    hf.save_pretrained(directory)
    module, params, _ = from_pretrained(directory)
  rng = np.random.default_rng(0)
  items = []
  for _ in range(n):
    head = rng.integers(MODEL['vocab_size'], size=prefix - int(rng.integers(0, 16))).tolist()
    answer = rng.integers(MODEL['vocab_size'], size=2).tolist()
    items.append([head + answer + [int(x)] for x in rng.choice(MODEL['vocab_size'], 4, replace=False)])
  scorer = PPLScorer(module, params, None, batch_size=args.batch)

  def ours() -> np.ndarray:
    return np.concatenate([scorer.losses_of_ids(items[i:i + args.batch], exact=False) for i in range(0, n, args.batch)])

  start = time.perf_counter()
  first = ours()
  cold = time.perf_counter() - start
  agree = float(np.mean(first.argmin(1) == torch_losses(hf, items, args.batch).argmin(1)))
  t_ours = median_time(ours, args.repeats, 0)
  t_hf = median_time(lambda: torch_losses(hf, items, args.batch), args.repeats, 1)
  result = {'items': n, 'prefix_tokens': prefix, 'batch_items': args.batch, 'mmjax_items_per_s': n / t_ours,
            'transformers_items_per_s': n / t_hf, 'ratio': t_hf / t_ours, 'mmjax_first_call_s': cold,
            'same_choice': agree}
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
