"""IPAdapter-Instruct on Stable Diffusion 1.5 (experiments/ipadapter_instruct/README.md).

Programs (launch.py --mode): train (the default: the adapter on a frozen SD1.5 through the shared trainer),
generate (images from a condition image, a query and a prompt), evaluate (CLIP-I/T/P/S on the held-out split).

  # about a minute: a tiny random SD stack learns synthetic digit tasks, then generates and is evaluated
  python launch.py --config configs/ipadapter_instruct.py:variant=smoke --workdir runs/ipai_smoke
  python launch.py --config configs/ipadapter_instruct.py:variant=smoke --workdir runs/ipai_smoke --mode evaluate
  # training from IP-Adapter+ (the paper's init) on your records (the JSONL layout: experiments/ipadapter_instruct/
  # data.py), SD frozen in bf16, FSDP over all chips; the adapter is exported to runs/ipai/adapter.safetensors
  python launch.py --config configs/ipadapter_instruct.py --workdir runs/ipai --config.mesh.data=1 \
      --config.mesh.fsdp=-1 --config.pipeline=/models/sd15 --config.adapter=/models/ip-adapter-plus_sd15.bin \
      --config.data.train=data/train.jsonl --config.data.val=data/val.jsonl
  # the released adapter on a diffusers SD1.5 folder (with image_encoder/ = CLIP ViT-H/14)
  python launch.py --config configs/ipadapter_instruct.py --mode generate --workdir runs/ipai_gen \
      --config.pipeline=/models/sd15 --config.adapter=/models/ip-adapter-instruct-sd15.bin \
      --config.image=cat.png --config.query="use the style" --config.prompt="a house by the sea"
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  c = base_config()
  c.experiment = 'experiments.ipadapter_instruct.experiment'
  c.variant = arg.variant

  # The models: a diffusers SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/, image_encoder/) and
  # an adapter checkpoint (ip-adapter-instruct-sd15 or ip-adapter-plus_sd15, .bin or .safetensors). Empty in the
  # smoke variant: a tiny random stack (experiments/ipadapter_instruct/tiny.py).
  c.pipeline = ''
  c.adapter = ''

  # --- generate (pipeline.py / generate.py) ---
  c.image = ''  # the condition image(s): a path, or several joined by ','
  c.query = 'use everything from the image'  # one of pipeline.QUERIES
  c.prompt = 'best quality, high quality'
  c.negative_prompt = 'monochrome, lowres, bad anatomy, worst quality, low quality'
  c.generate = ml_collections.ConfigDict()
  c.generate.num_steps = 30
  c.generate.guidance_scale = 5.0  # s
  c.generate.instruct_scale = 2.0  # s_instr (3-way CFG)
  c.generate.image_scale = 1.0  # s_img (3-way CFG)
  c.generate.scale = 0.8  # λ, the IP attention's weight
  c.generate.auto_scale = True  # λ − 0.2 for composition and pose queries
  c.generate.num_images = 1  # per condition image
  c.generate.seed = 0
  c.generate.height = 512  # pixels; 0: the UNet's sample_size x the VAE factor
  c.generate.width = 768
  c.generate.dtype = 'float32'  # parameters and compute ('bfloat16' or 'float16' on accelerators)

  # --- training (data.py / experiment.py) ---
  c.data = ml_collections.ConfigDict()
  c.data.train = ''  # JSONL of training records (README: the layout)
  c.data.val = ''  # JSONL of held-out records (evaluate)
  c.data.instructions = ''  # JSON {task: [instruction, ...]}; empty: data.INSTRUCTIONS
  c.data.resolution = 512
  c.data.drop_text = 0.05  # condition dropout, each (an assumption: the IP-Adapter recipe)
  c.data.drop_image = 0.05
  c.data.drop_both = 0.05
  c.data.smoke_dir = ''  # variant=smoke without data.train: where the smoke set is written ('': ~/.cache/mmjax)
  c.data.smoke_per_task = 48  # smoke training records per task (val: a quarter)
  c.total_steps = 100_000
  c.batch_size = 512  # FSDP on a pod: --config.mesh.fsdp=-1 --config.mesh.data=1 (or any split)
  c.compute_dtype = 'bfloat16'  # the frozen SD parts are held in it too
  c.log_every = 100
  c.eval_every = 0  # no periodic evaluator: --mode evaluate scores a checkpoint's adapter
  c.ckpt_every = 5000
  # The adapter only (resampler + every attn2's to_k_ip / to_v_ip); SD is a frozen subtree. AdamW at a constant
  # rate as IP-Adapter trains; the paper's batch 512 at 1e-6 for 100k steps.
  c.optim.regex = r'^image_proj/|/to_[kv]_ip_0/'
  c.optim.lr = 1e-6
  c.optim.schedule = 'constant'
  c.optim.weight_decay = 1e-2

  # --- evaluate (metrics.py / evaluate.py) ---
  c.evaluate = ml_collections.ConfigDict()
  # An HF CLIPModel folder for the metrics (README: openai/clip-vit-large-patch14, as IP-Adapter scores); the smoke
  # variant scores with a random tiny CLIP instead.
  c.evaluate.clip = ''
  c.evaluate.clip_score_weight = 2.5  # CLIPScore's w in CLIP-T, CLIP-P and CLIP-S (metrics.py)
  c.evaluate.max_per_task = 1000  # held-out records per task (the paper holds out 1,000)
  c.evaluate.batch_size = 8  # conditions generated together (the generate settings: config.generate)
  c.evaluate.grid_rows = 4  # per task in grid.png

  if arg.variant == 'smoke':  # the tiny random stack at 32 x 32 learns the synthetic tasks in about a minute
    c.data.resolution = 32
    c.total_steps = 50
    c.batch_size = 8
    c.compute_dtype = 'float32'
    c.log_every = 10
    c.ckpt_every = 50
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 5
    c.generate.height = c.generate.width = 0  # the tiny UNet's own 32 x 32
    c.generate.num_steps = 10
    c.evaluate.max_per_task = 8
  return c
