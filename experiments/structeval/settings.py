"""The settings of StructEval's two long-running programs, in a module light enough for configs/structeval.py to
import (the programs' own modules pull in the trainer and models). configs/structeval.py copies them into its
`generation` and `contamination` sub-dicts, so `--config.generation.seeds=...` is a known key.
"""

# generate_struct (generation.py): the seed file and page corpus, the output name, an OpenAI-compatible endpoint
# (api_url, api_model, api_key_env: the environment variable holding the key), sampling, parallel requests, the
# difficulty-filter pool (';'-separated model folders) and its threshold: an item more than max_correct of the pool
# answer is dropped (the release: 12 of 18).
GENERATION = {'seeds': '', 'corpus': '', 'out': '', 'api_url': '', 'api_model': '', 'api_key_env': '',
              'temperature': 0.7, 'max_new_tokens': 1024, 'concurrency': 4, 'pool': '', 'max_correct': 12}

# contaminate (contamination.py): steps and the AdamW peak lr of the fine-tune (cosine, no warmup), its batch, the
# tiny model's sizes, the PPL scoring batch, and hf_dir: an HF Qwen2 folder to fine-tune instead of the tiny model.
CONTAMINATION = {'steps': 150, 'lr': 3e-3, 'batch_size': 8, 'hidden_size': 64, 'intermediate_size': 128,
                 'layers': 2, 'heads': 4, 'kv_heads': 2, 'eval_batch_size': 32, 'hf_dir': ''}
