"""LLaVA-OneVision training (arXiv 2408.03326): SigLIP-so400m + 2-layer GELU projector + Qwen2, stages 1 to OV.

get_config('size=0.5b|7b|72b,stage=stage1|stage1.5|si|ov,variant=default|smoke,examples=N')

size: the model size; variant: the paper's run (default), or a tiny random model on generated data (smoke).

  stage     data (paper)                  trainable    peak LR (vision / rest)  visual layout        max crops
  stage1    LCS-558K                      projector    frozen / 1e-3 (LLM frozen)  one 384 crop, 729 tokens  1
  stage1.5  4M high-quality knowledge     all          2e-6 / 1e-5              AnyRes {2x2,1x2,1x3,2x1,3x1}   5
  si        3.2M single-image             all          2e-6 / 1e-5              AnyRes-Max-9, grids to 6x6  37
  ov        1.6M SI + multi-image + video all          2e-6 / 1e-5              as si; 730/image, 32 frames  37

One epoch per stage, AdamW (weight decay 0, gradient clip 1.0), cosine decay to 0 after a linear warmup over 3% of
the steps. total_steps = ceil(examples / batch_size) with the paper's example count for the stage; pass
`examples=N` (the size of your data) to get_config rather than --config.total_steps, so that the warmup stays 3%
(warmup_steps = ceil(0.03 * total_steps) is computed here; overriding total_steps alone leaves it stale).
Global batch 512 (0.5B; stage 1 for every size) or 256 (7B, 72B). Training length 8192 tokens in stage 1, 32768
after (visual tokens count). Loss masking 'original' is LLaVA-NeXT `preprocess_qwen`; 'assistant' trains on the
replies only.

Weights: a run starts from an mmjax params checkpoint (`--config.init_from`), e.g. an HF llava_onevision directory
converted with `launch.py --mode convert`; the tokenizer and image preprocessing come from an HF directory
(`--config.data.processor`: tokenizer.json, preprocessor_config.json; its config.json, when present, is checked
against the model size's dimensions). Each stage starts from the previous stage's workdir (init_from accepts a
training workdir). Stage 1 composes its start from the two pretrained HF folders, SigLIP-so400m (its 27th layer and
pooling head are not used) and Qwen2-Instruct, with a fresh random projector:
  --config.init_from='vision_tower=HF/siglip-so400m-patch14-384;language_model=HF/Qwen2-0.5B-Instruct'
(a config file can also skip tensors: {'vision_tower': {'source': DIR, 'skip': 'head/.*|layers_26/.*'}}).

  # 80 s on an idle 2-core CPU: a tiny random model on the generated shapes set (works with every stage)
  python launch.py --config configs/llava_onevision.py:size=0.5b,stage=ov,variant=smoke --workdir runs/ov_smoke
  # HF checkpoint -> mmjax params checkpoint (once)
  python launch.py --mode convert --convert_from HF/llava-onevision-qwen2-0.5b-si-hf --convert_to runs/ov05_si_params
  # OV stage from the SI checkpoint on a LLaVA-NeXT YAML mixture (json_path + sampling_strategy per dataset)
  python launch.py --config configs/llava_onevision.py:size=0.5b,stage=ov,examples=N --workdir runs/ov05_ov \\
      --config.init_from=runs/ov05_si_params --config.data.processor=HF/llava-onevision-qwen2-0.5b-si-hf \\
      --config.model.text.vocab_size=152000 --config.data.mixture=onevision.yaml --config.data.image_root=DATA
  # stage 1: projector only, on LCS-558K (blip_laion_cc_sbu_558k.json + images/)
  python launch.py --config configs/llava_onevision.py:size=0.5b,stage=stage1,examples=558128 \\
      --workdir runs/ov05_s1 --config.init_from='vision_tower=SIGLIP;language_model=QWEN2' \\
      --config.data.processor=HF_INIT \\
      --config.data.json=LCS/blip_laion_cc_sbu_558k.json --config.data.image_root=LCS/images
  # the next stage starts from the last one's workdir
  python launch.py --config configs/llava_onevision.py:size=0.5b,stage=stage1.5,examples=N \\
      --workdir runs/ov05_s15 --config.init_from=runs/ov05_s1 --config.data.processor=HF_INIT \\
      --config.data.mixture=mid_stage.yaml --config.data.image_root=DATA
  # back to HF: the report writes config.json and the processor files into WORKDIR/hf
  python launch.py --mode convert --convert_from runs/ov05_ov --convert_to runs/ov05_ov_hf --hf_config runs/ov05_ov/hf
  # 7B / 72B: size=7b / size=72b (72B shards heads, MLP and vocabulary 8-way: run it on 8-GPU nodes)

Sharding (SigLIP, projector and Qwen2 alike): parameters' 'embed' axis over the 'fsdp' mesh axis (FSDP), heads,
KV heads, MLP and vocabulary over 'tensor' (tensor parallelism); batches over data x fsdp. 0.5B and 7B are fully
sharded over all devices (the paper's ZeRO-3); 72B adds 8-way tensor parallelism. A dimension a mesh axis does
not divide (e.g. 0.5B's 14 heads over tensor=4, or widths over fsdp=256) is replicated over that axis
(mmjax.train.sharding.fit_sharding); keep fsdp <= 128 so that every width stays sharded.
"""
import math

import ml_collections

from mmjax.train.config import base_config, group, parse_arg

# Paper Table 1 / the LLaVA-NeXT scripts: one epoch over this many examples per stage.
STAGE_EXAMPLES = {'stage1': 558_128, 'stage1.5': 4_000_000, 'si': 3_200_000, 'ov': 1_600_000}
WARMUP_RATIO = 0.03
VISION_LR, REST_LR, PROJECTOR_LR = 2e-6, 1e-5, 1e-3

# Qwen2 decoders of the paper's three sizes (spec section 1), with Qwen2's own vocabularies: the original trainer
# adds no token (`<image>` / `<video>` take the unused rows 151646 / 151647). The llava-hf conversions pad the
# vocabulary to 152000 (0.5B) / 152128: start from those with --config.model.text.vocab_size=152000 / 152128.
TEXT = {
    '0.5b': dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    '7b': dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    '72b': dict(vocab_size=152_064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}
# SigLIP-so400m/14 at 384 px with its last layer removed.
VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
              image_size=384, patch_size=14)
SMOKE_TEXT = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
# 48 px shapes images on a 3 x 3 grid: one 16 px patch per grid cell.
SMOKE_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    image_size=48, patch_size=16)
ALL_GRIDS = tuple((i, j) for i in range(1, 7) for j in range(1, 7))
# AnyRes grid pinpoints as (rows, cols) of crops, and N of anyres_max_N; stage 1 uses one flat crop instead.
STAGE_ANYRES = {'stage1.5': (((2, 2), (1, 2), (1, 3), (2, 1), (3, 1)), 4), 'si': (ALL_GRIDS, 9),
                'ov': (ALL_GRIDS, 9)}


def _model(text: dict, vision: dict) -> ml_collections.ConfigDict:
  # scan_layers: the decoder's layers as one nn.scan (compile time independent of depth; mmjax.train.aot).
  return ml_collections.ConfigDict({'text': dict(text, rope_theta=1e6, rms_norm_eps=1e-6, scan_layers=False),
                                    'vision': dict(vision, layer_norm_eps=1e-6)})


def _optim_groups(c: ml_collections.ConfigDict, stage: str, rest_lr: float, vision_lr: float) -> None:
  """Stage 1 trains the projector (and the unused newline) only; later stages train everything."""
  c.optim.lr = rest_lr
  if stage == 'stage1':
    c.optim.groups.vision = group(r'^vision_tower/', frozen=True)
    c.optim.groups.language = group(r'^language_model/', frozen=True)
  else:
    c.optim.groups.vision = group(r'^vision_tower/', lr=vision_lr)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, size='0.5b', stage='ov', variant='default', examples=0)
  if arg.size not in TEXT:
    raise ValueError(f"size must be one of {sorted(TEXT)}, got {arg.size!r}")
  if arg.stage not in STAGE_EXAMPLES:
    raise ValueError(f"stage must be one of {list(STAGE_EXAMPLES)}, got {arg.stage!r}")
  if arg.variant not in ('default', 'smoke'):
    hint = f' (the model size is size={arg.variant})' if arg.variant in TEXT else ''
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}{hint}")
  smoke = arg.variant == 'smoke'
  c = base_config()
  c.experiment = 'experiments.llava_onevision.experiment'
  c.variant = arg.variant
  c.model = _model(SMOKE_TEXT, SMOKE_VISION) if smoke else _model(TEXT[arg.size], VISION)
  c.model.init_std = 0.02  # random init only: std of the decoder's matrices (HF initializer_range)

  c.data = ml_collections.ConfigDict()
  c.data.processor = ''  # HF llava_onevision directory: tokenizer.json + preprocessor_config.json (smoke: built)
  c.data.json = ''  # a LLaVA conversation .json / .jsonl
  c.data.mixture = ''  # or a LLaVA-NeXT YAML mixture (json_path + sampling_strategy per dataset)
  c.data.image_root = ''  # image / video paths are relative to it; '' = the JSON's folder
  c.data.max_frames = 32  # videos: uniformly sampled frames (frames_upbound)
  c.data.loss_masking = 'original'  # 'original' (LLaVA-NeXT preprocess_qwen) or 'assistant'
  c.data.max_length = 8192 if arg.stage == 'stage1' else 32768  # tokens per example, visual included
  # 'flat': every image is one crop of side^2 tokens, no newline (LLaVA-NeXT mm_patch_merge_type=flat);
  # 'anyres': AnyRes for a sample's only image, one crop + newline per image of a multi-image sample.
  c.data.image_layout = 'flat' if arg.stage == 'stage1' else 'anyres'
  grids, anyres_max = STAGE_ANYRES.get(arg.stage, ((), 0))
  c.data.grids = grids  # AnyRes grid pinpoints as (rows, cols) of crops ('anyres' only)
  c.data.anyres_max = anyres_max  # N of anyres_max_N: larger maps are reduced to ~N crops' worth of tokens
  # Crops per example (AnyRes base + tiles, the images of a multi-image sample, video frames): a fixed shape.
  c.data.max_crops = 1 if arg.stage == 'stage1' else 1 + max(r * k for r, k in grids)

  c.eval = ml_collections.ConfigDict()
  c.eval.json = ''  # multiple-choice LLaVA JSON (answers are option letters); '' = no evaluator
  c.eval.image_root = ''
  c.eval.max_examples = 0  # 0 = all
  c.eval.batch_size = 0  # 0 = one example per device
  c.eval.max_length = 0  # tokens per evaluated example; 0 = data.max_length
  c.eval.report_examples = 8  # predictions written to WORKDIR/predictions.jsonl

  examples = arg.examples or STAGE_EXAMPLES[arg.stage]
  c.batch_size = 512 if arg.size == '0.5b' or arg.stage == 'stage1' else 256
  c.total_steps = math.ceil(examples / c.batch_size)
  c.optim.warmup_steps = math.ceil(WARMUP_RATIO * c.total_steps)
  c.optim.schedule = 'cosine'
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  _optim_groups(c, arg.stage, PROJECTOR_LR if arg.stage == 'stage1' else REST_LR, VISION_LR)
  c.compute_dtype = 'bfloat16'
  c.remat_policy = 'full'
  c.mesh = {'data': 1, 'fsdp': -1, 'tensor': 8 if arg.size == '72b' else 1}
  c.log_every = 10
  c.eval_every = 0
  c.ckpt_every = 500

  if smoke:
    # The generated shapes set (mmjax.data.shapes) with a word-level tokenizer built from it: captions plus
    # single- and multi-image questions answered in words for training; held-out multiple-choice questions for
    # evaluation (scored both by option letter and by ranking the options' texts). A 48 px image fills one crop
    # (si/ov: AnyRes grid 1x1, base + 1 tile = 21 tokens; 10 tokens per image of a multi-image question).
    c.data.shapes = ml_collections.ConfigDict({'captions': 3000, 'train': 3000, 'eval': 400, 'image_size': 48,
                                               'seed': 0, 'multi_image_fraction': 0.3,
                                               # '' = the user's cache: $XDG_CACHE_HOME/mmjax/shapes, ~/.cache/...
                                               'cache_dir': ''})
    c.data.loss_masking = 'assistant'
    c.data.max_length = 96  # the generated captions and answers take at most ~80 tokens
    c.eval.max_length = 192  # the multiple-choice questions list their options: up to ~190
    c.data.max_crops = 3  # a 3-image question: 3 crops in every layout; one image: AnyRes base + 1 tile
    c.eval.batch_size = 40
    c.batch_size = 32
    c.total_steps = 400
    c.optim.warmup_steps = math.ceil(WARMUP_RATIO * c.total_steps)
    # Random init needs a far larger rate than fine-tuning: keep the stage's groups and their ratio.
    _optim_groups(c, arg.stage, 3e-3, 3e-3 * VISION_LR / REST_LR)
    c.model.init_std = 0.1  # ~ hidden^-1/2: at 0.02 a 64-wide decoder does not learn the option lookup
    c.compute_dtype = 'float32'
    c.remat_policy = 'none'
    c.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
    c.log_every = 25
    c.eval_every = 0
    c.ckpt_every = 1000
  return c
