"""The config schema of every benchmark run: `launch.py --config configs/<benchmark>.py --mode generate|score`.

A benchmark answers a data file with a model checkpoint (generate) or scores saved responses (score); it trains
nothing, so its config has no optimiser, mesh or EMA keys, and its batch size and dtype are its own. A benchmark's
config starts from `benchmark_config()` and adds its own keys (e.g. MMIU's `image_root`, CoverBench's `prompt`).
"""
from __future__ import annotations

import ml_collections

VARIANTS = ('default', 'smoke')
DTYPES = ('float32', 'bfloat16', 'float16')


def benchmark_config(experiment: str, variant: str = 'default') -> ml_collections.ConfigDict:
  """The keys every benchmark config carries; `experiment` is the module that declares the benchmark's PROGRAMS."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
  c = ml_collections.ConfigDict()
  c.experiment = experiment
  c.variant = variant  # 'default': config.data_file; 'smoke': a generated set answered by a seeded random guesser
  c.seed = 0  # the guesser's seed, and the seed of a benchmark's random choices (e.g. MMIU's image subsampling)
  c.data_file = ''  # the benchmark's data in its official on-disk format
  c.responses = ''  # score: JSONL of {"id": <position in data_file>, "response": str}
  c.checkpoint = ''  # generate: an HF directory, or an mmjax training workdir (then also `base`)
  c.base = ''  # generate: the HF directory with the architecture and tokenizer of a workdir checkpoint
  c.compute_dtype = 'float32'  # generate: the dtype the model's parameters and activations take
  c.batch_size = 8  # generate: prompts per generate call (a rerun may change it)
  c.max_new_tokens = 32  # generate: the answer budget in tokens
  c.context_tokens = 0  # generate: the window (prompt + answer); 0 = the model's max_position_embeddings
  c.chat_template = 'chatml'  # generate: 'chatml' (Qwen2, LLaVA-OneVision) or 'llama3'
  c.system_message = ''  # generate: the system turn; '' = the template's ('You are a helpful assistant.' / none)
  c.smoke_context_tokens = 256  # smoke: the guesser's window in tokens
  c.progress_bar = True
  return c


def check_benchmark_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key of the shared schema that holds a value no run can use."""
  checks = (
      ('variant', config.variant in VARIANTS, f"one of {', '.join(VARIANTS)}"),
      ('compute_dtype', config.compute_dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
      ('batch_size', config.batch_size >= 1, '>= 1'),
      ('context_tokens', config.context_tokens >= 0, '>= 0 (0 = the model\'s window)'),
      ('smoke_context_tokens', config.smoke_context_tokens >= 1, '>= 1'),
  )
  for key, ok, want in checks:
    if not ok:
      raise ValueError(f'config.{key} must be {want}, got {config[key]!r}')
