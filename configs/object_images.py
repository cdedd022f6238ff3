"""Object Images ("An Object is Worth 64x64 Pixels", experiments/object_images/): meshes as 12-channel images.

stage=null2geo (the only stage so far): DiT-B/1 on the 4 geometry channels (position, occupancy) of 64² omages,
as the spec's table: patch 1, depth 12, width 768, 12 heads, learned sigma (MSE(ε) + VB), timestep frequencies
without diffusers' shift (downscale_freq_shift 0), 63 ABO classes + the null label (63), label dropout 0.1,
squaredcos_cap_v2 over T = 1000, AdamW lr 1e-4 wd 0, no EMA, no gradient clipping, bf16 compute. The batch is
unresolved in the paper (the code's 4 per GPU on 4 GPUs is 16, the text says an effective 32): we use 32.
Programs (launch.py --mode):
  encode    a folder of .glb files -> 64² omages in the released storage (config.encode; see encode.py)
  train     the trainer (data from config.data: source h5 | npz | glb | smoke)
  sample    250 respaced ancestral DDPM steps (learned-range variance, x0 clipped), CFG 4 on all four ε channels;
            writes omages (npz), meshes (.obj and .glb) and a preview grid into <workdir>/samples
  evaluate  p-FID / p-KID of sampled meshes against the training shapes, per checkpoint step of eval.steps
variant=smoke: a tiny DiT (patch 4) on primitives (one box, sphere, torus, cylinder or cone per object, the label
its kind) encoded once at 256² with a 4% margin (at 2% the charts merge after pooling to 64²), cached in
data.smoke_dir; p-FID with a small randomly initialised PointNet++ (no weights offline: the numbers only rank
checkpoints of one run).

  # the smoke run (a few minutes on 2 CPU cores), its samples, and p-FID at an early and the last step
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke --mode sample
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke --mode evaluate
  # encode ABO's GLBs, then train null2geo on them (or point data.path at the released df_p64_m02_res64.h5)
  python launch.py --config configs/object_images.py --mode encode --workdir runs/abo_omages \
      --config.encode.glb_dir=/data/abo/3dmodels/original --config.encode.workers=8 \
      --config.encode.meta_path=/data/omages/df_p64_m02_res64_meta.json
  python launch.py --config configs/object_images.py:stage=null2geo --workdir runs/n2g \
      --config.data.source=npz --config.data.path=runs/abo_omages --config.data.meta_path=runs/abo_omages/index.json
  python launch.py --config configs/object_images.py:stage=null2geo --workdir runs/n2g \
      --config.data.source=h5 --config.data.path=/data/omages/df_p64_m02_res64.h5
  python launch.py --config configs/object_images.py:stage=null2geo --workdir runs/n2g --mode sample
  python launch.py --config configs/object_images.py:stage=null2geo --workdir runs/n2g --mode evaluate \
      --config.eval.pointnet=/data/point_e/pointnet.pt --config.data.categories='("chair",)'
"""
import ml_collections

from experiments.object_images.encode import encode_config
from mmjax.train.config import base_config, parse_arg

STAGES = ('null2geo',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default', stage='null2geo')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  if arg.stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}, got {arg.stage!r}')
  c = base_config()
  c.experiment = 'experiments.object_images.experiment'
  c.variant = arg.variant
  c.stage = arg.stage
  c.encode = encode_config()  # the release's settings: 1024² bake, 64² sparse pooling, 64 patches, 2% margin

  c.data = ml_collections.ConfigDict()
  c.data.source = 'h5'  # h5 (released 64² set) | npz (per-shape npz files) | glb (raw GLBs, encoded when read) | smoke
  c.data.path = ''  # the .h5 file, the npz root, or the GLB folder
  c.data.meta_path = ''  # the meta json; '' = beside the h5 (<stem>_meta.json); npz needs it; glb: optional labels
  c.data.layout = 'release'  # npz: release (<path>/omage_tensor.npz) | hf (data/<c>/<id>/objamage_tensor.npz)
  c.data.split = 'all'  # the paper trains on 'fullsplit' (every shape); 'train' / 'val' cut 90/10 with seed 314
  c.data.categories = ()  # ABO class names to keep; () keeps all 63
  c.data.size = 64
  c.data.smoke_dir = ''  # variant=smoke: where the encoded primitives are cached ('': $XDG_CACHE_HOME or ~/.cache)
  c.data.smoke_shapes = 64
  c.data.smoke_resolution = 256
  c.data.smoke_margin = 0.04

  c.model = ml_collections.ConfigDict()
  c.model.patch = 1
  c.model.width = 768
  c.model.depth = 12
  c.model.num_heads = 12
  c.model.learn_sigma = True
  c.model.class_dropout = 0.1
  c.model.downscale_freq_shift = 0.0  # DiT / omages (diffusers' DiTTransformer2DModel hard-codes 1)

  c.diffusion = ml_collections.ConfigDict()  # diffusers' scheduler-config names
  c.diffusion.num_train_timesteps = 1000
  c.diffusion.beta_schedule = 'squaredcos_cap_v2'
  c.diffusion.beta_start = 1e-4  # unused by squaredcos_cap_v2
  c.diffusion.beta_end = 2e-2
  c.diffusion.prediction_type = 'epsilon'

  c.sample = ml_collections.ConfigDict()
  c.sample.num_steps = 250  # DDPMScheduler learned_range, linspace spacing: guided-diffusion's space_timesteps('250')
  c.sample.clip_sample = True  # x0 clipped to [-1, 1]
  c.sample.cfg_scale = 4.0  # on all four ε channels (upstream DiT guides 3 of 4)
  c.sample.num_samples = 16
  c.sample.batch_size = 16  # objects per sampler call (each runs the model on 2x that: CFG)
  c.sample.labels = ()  # class ids to draw, cycled; () cycles the classes of the training data
  c.sample.seed = 0
  c.sample.step = -1  # checkpoint step to sample; -1 the latest

  c.eval = ml_collections.ConfigDict()
  c.eval.steps = ()  # checkpoint steps to evaluate; () the latest
  c.eval.num_samples = 512  # the paper's samples per category
  c.eval.num_ref = 0  # training shapes to compare against; 0 = all
  c.eval.num_points = 4096  # points per cloud: stated in neither the paper nor its code (an assumption)
  c.eval.pointnet = ''  # Point-E's pointnet.pt or a .safetensors of it; '' = random init (eval.pointnet_seed)
  c.eval.pointnet_width = 128  # PointNet++ base width (Point-E: 128); smaller only with random weights
  c.eval.pointnet_seed = 0
  c.eval.seed = 0

  c.total_steps = 1_000_000  # the official run: 3000 epochs of the data set x4, i.e. 375·N steps for N shapes
  c.batch_size = 32
  c.log_every = 100
  c.eval_every = 0
  c.ckpt_every = 10_000
  c.compute_dtype = 'bfloat16'  # the official '16-mixed'; params stay fp32
  c.ema_decay = 0.0
  c.optim.lr = 1e-4
  c.optim.schedule = 'constant'
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0

  if arg.variant == 'smoke':
    c.encode.resolution = 256
    c.data.source = 'smoke'
    c.model.update(patch=4, width=64, depth=2, num_heads=4)
    c.compute_dtype = 'float32'
    c.total_steps = 300
    c.batch_size = 16
    c.log_every = 25
    c.ckpt_every = 50
    c.keep_ckpts = 10
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.sample.num_steps = 50
    c.sample.num_samples = 10
    c.sample.batch_size = 10
    c.eval.steps = (50, 300)
    c.eval.num_samples = 20
    c.eval.num_ref = 20
    c.eval.num_points = 1024
    c.eval.pointnet_width = 16
  return c
