"""AVESFormer (issue 20): real-time audio-visual segmentation on AVSBench S4 / MS3 / AVSS, through the shared trainer.

Arguments: task=s4|ms3|avss, backbone=pvt_b0..pvt_b5|r50, recipe=avsegformer|combo, variant=default|smoke,
decoder=avesformer|avsegformer (the baseline built from the same parts). Tags as in the spec ([V] paper / official
code, [R] reviews, [M] recollection, [A] our assumption); experiments/avesformer/README.md lists every choice.

  # the CPU smoke: a tiny model on synthetic sounding shapes, then the official-protocol evaluation
  python launch.py --config configs/avesformer.py:variant=smoke --workdir runs/avs_smoke
  python launch.py --config configs/avesformer.py:variant=smoke --workdir runs/avs_smoke --mode evaluate
  # S4 with PVTv2-b2 from timm weights, VGGish from the torchvggish release, the COMBO recipe
  python launch.py --config configs/avesformer.py:task=s4,backbone=pvt_b2,recipe=combo --workdir runs/avs_s4 \
      --config.data.root=/data/AVSBench/Single-source --config.model.backbone_weights=pvt_v2_b2.pth \
      --config.model.audio_weights=vggish-10086976.pth
"""
import ml_collections

from experiments.avesformer.augment import combo_scales
from experiments.avesformer.model import BACKBONES
from mmjax.train.config import base_config, group, parse_arg

TASKS = ('s4', 'ms3', 'avss')
RECIPES = ('avsegformer', 'combo')
# Training videos per split, for epochs -> steps: S4 3,452 [V], MS3 286 [M], AVSS 8,498 [M].
TRAIN_VIDEOS = {'s4': 3452, 'ms3': 286, 'avss': 8498}
TINY_VGGISH_CONV = (8, 'M', 16, 'M', 16, 'M', 16, 'M')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default', task='s4', backbone='pvt_b2', recipe='avsegformer', decoder='avesformer')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  for key, valid in (('task', TASKS), ('recipe', RECIPES), ('decoder', ('avesformer', 'avsegformer')),
                     ('backbone', [b for b in BACKBONES if not b.startswith('tiny')])):
    if arg[key] not in valid:
      raise ValueError(f'configs/avesformer.py: {key} must be one of {"|".join(valid)}, got {arg[key]!r}')
  c = base_config()
  c.experiment = 'experiments.avesformer.experiment'
  c.variant, c.task, c.recipe = arg.variant, arg.task, arg.recipe

  c.data = ml_collections.ConfigDict()
  c.data.root = ''  # the task's AVSBench folder
  c.data.audio = 'wav' if arg.task == 'avss' else 'log_mel'  # 'log_mel': .npy next to the pkl files [A]; 'wav'
  c.data.image_size = 224  # [V]
  # Training augmentation (experiments/avesformer/augment.py; the recipe sets it below): short side int(s * image_size)
  # for s drawn from train_scales, a random image_size crop (padded where smaller), a horizontal flip with
  # probability train_hflip; one draw per clip. () and 0 = off, recipe avsegformer's: frames are only resized to
  # 224 [V AVSegFormer dataloader].
  c.data.train_scales = ()
  c.data.train_hflip = 0.0
  c.data.synthetic_train = 96  # smoke only: synthetic clips per split
  c.data.synthetic_eval = 16
  c.data.synthetic_shapes = 2
  c.data.synthetic_noise = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.backbone = arg.backbone  # the backbone behind 79.9 is unverified (R50 or PVTv2-b0/b1/b2) [A]
  c.model.backbone_weights = ''  # HF PvtV2 folder, timm .pth/.safetensors, or torchvision R50 file; '' = random
  c.model.audio_weights = ''  # torchvggish vggish-10086976.pth or .safetensors; '' = random (seed)
  c.model.audio_trainable = False  # VGGish frozen [V]
  # Random init of what no weight file covers: 'flax' (the modules' initialisers) or 'host' (numpy's generic
  # fan-in normal, experiments/avesformer/model.py host_random_like; the CPU smoke's: it compiles no initialiser).
  c.model.init = 'flax'
  c.model.audio_conv_widths = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M')  # [V]
  c.model.audio_fc_widths = (4096, 4096, 128)  # [V]
  c.model.decoder = arg.decoder
  c.model.num_classes = 71 if arg.task == 'avss' else 1  # [V]
  c.model.dim = 256  # [V AVSegFormer]
  c.model.heads = 8  # [V AVSegFormer]
  c.model.num_prompts = 16  # PQG's N [A]; ablated in the paper [R]
  c.model.prompt_mlp = True  # [A]
  # Per scale 1/4, 1/8, 1/16, 1/32: ELF early, attention late [R]; the baseline attends at 1/8..1/32 (AVSegFormer's
  # encoder scales) and fuses 1/4 by the FPN alone [A].
  c.model.stages = ('elf', 'elf', 'attn', 'attn') if arg.decoder == 'avesformer' else ('none', 'attn', 'attn', 'attn')
  c.model.blocks_per_stage = 1  # [A]
  c.model.dw_kernel = 7  # [A]
  c.model.ffn_ratio = 4  # [A]
  c.model.ffn_type = 'mlp'  # 'mlp' | 'dwconv_mlp' [A]
  c.model.gn_groups = 32  # [V AVSegFormer]
  c.model.mask_dims = (128, 32)  # [V AVSegFormer]
  c.model.num_queries = 300  # baseline [V AVSegFormer]
  c.model.query_layers = 6  # baseline [V AVSegFormer]
  c.model.query_ffn = 1024  # baseline [V AVSegFormer]

  c.loss = ml_collections.ConfigDict({'bce': 0.0, 'dice': 0.0, 'iou': 0.0, 'mix': 0.0, 'ce': 0.0})
  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'test'
  c.eval.frame_mask = False  # AVSS: False counts padded frames as background, as AVSBench's test.py
  c.eval.overlays = 8  # videos drawn as PNG overlays by --mode evaluate
  c.eval.shuffle_seed = 0  # smoke: the shuffled-audio control

  epochs_to_steps = lambda epochs: epochs * TRAIN_VIDEOS[arg.task] // c.batch_size  # noqa: E731
  if arg.recipe == 'avsegformer':  # [V AVSegFormer configs]
    c.batch_size = 4 if arg.task == 'avss' else 2
    c.total_steps = epochs_to_steps({'s4': 30, 'ms3': 60, 'avss': 30}[arg.task])
    c.optim.lr = 2e-5
    c.optim.schedule = 'constant'  # [M]
    c.optim.weight_decay = 0.01  # torch AdamW's default [M]
    c.optim.clip_norm = 0.0  # [M]
    frozen_epochs = {'s4': 5, 'ms3': 10, 'avss': 0}[arg.task]  # backbone frozen for the first epochs [V]
    if frozen_epochs:
      c.optim.groups.backbone = group('^backbone/', frozen_until=epochs_to_steps(frozen_epochs))
    if arg.task == 'avss':
      c.loss.ce = 1.0
    else:
      c.loss.dice, c.loss.mix = 1.0, 0.1  # [V]
  else:  # COMBO (same lab) [V COMBO configs]; it may be AVESFormer's recipe [A]
    c.batch_size = 8
    c.total_steps = 20000 if arg.task == 'ms3' else 90000
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.05
    c.optim.schedule = 'linear'  # detectron2's poly (power 0.9) approximated by linear decay to 0 [A]
    c.optim.clip_norm = 0.01
    c.optim.groups.backbone = group('^backbone/', lr=1e-5)  # backbone lr x 0.1
    # Scale jitter 0.5..2.0 (short side 112..448 at 224, step 0.1), random 224 crop, flip 0.5 [V COMBO]; COMBO's SSD
    # colour jitter is not reproduced.
    c.data.train_scales, c.data.train_hflip = combo_scales(), 0.5
    if arg.task == 'avss':
      c.loss.ce = 1.0
    else:
      c.loss.bce, c.loss.dice = 1.0, 1.0  # Mask2Former-style mask losses, weights [A]
  c.log_every = 50
  c.eval_every = 0  # the final step evaluates
  c.ckpt_every = 2000

  if arg.variant == 'smoke':
    c.data.image_size = 32  # 2 shapes of radius 4.8 px; 4x cheaper steps than 64 px, and learnt faster
    c.model.backbone = 'tiny_pvt'
    c.model.init = 'host'
    c.model.audio_conv_widths = TINY_VGGISH_CONV
    c.model.audio_fc_widths = (64, 64, 128)
    c.model.dim, c.model.heads, c.model.num_prompts, c.model.gn_groups = 32, 2, 4, 8
    c.model.mask_dims = (16, 8)
    c.model.num_queries, c.model.query_layers, c.model.query_ffn = 8, 2, 64
    c.model.ffn_ratio = 2
    c.optim.groups = ml_collections.ConfigDict()
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps, c.optim.clip_norm = 3e-3, 'cosine', 10, 1.0
    c.optim.weight_decay = 0.0
    c.batch_size = 8
    c.total_steps = 200
    c.log_every = 10
    c.ckpt_every = 200
    c.eval.split = 'val'
    c.eval.overlays = 4
    if arg.task != 'avss':  # BCE + Dice learn faster from scratch than Dice + mix
      c.loss.bce, c.loss.dice, c.loss.mix = 1.0, 1.0, 0.0
  return c
