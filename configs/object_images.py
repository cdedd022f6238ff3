"""Object Images ("An Object is Worth 64x64 Pixels", experiments/object_images/): meshes as 12-channel images.

stage=null2geo (default): DiT-B/1 on the 4 geometry channels (position, occupancy) of 64² omages, as the spec's
table: patch 1, depth 12, width 768, 12 heads, learned sigma (MSE(ε) + VB), timestep frequencies without diffusers'
shift (downscale_freq_shift 0), 63 ABO classes + the null label (63), label dropout 0.1, squaredcos_cap_v2 over
T = 1000, AdamW lr 1e-4 wd 0, no EMA, no gradient clipping, bf16 compute. The batch is unresolved in the paper (the
code's 4 per GPU on 4 GPUs is 16, the text says an effective 32): we use 32.
stage=geo2mat: imagen-pytorch 1.26's U-Net (config.unet: dim 256, mults (1, 2, 3, 4), 3 resnet blocks, attention at
levels 2-4, 8 heads, a 768-d class token) on 12-channel omages: the 5 material channels (albedo, metalness,
roughness) denoised, the 4 geometry channels the condition; continuous cosine schedule, v-objective, min-SNR 5, class
token dropped with p 0.1 (config.geo2mat); Adam lr 1e-4, betas (0.9, 0.99), eps 1e-8, batch 32, fp32, EMA 0.999
(no gradient clipping: the spec names none); sampling 1000 steps, cond_scale 1, dynamic thresholding 0.95.
Programs (launch.py --mode):
  encode    a folder of .glb files -> 64² omages in the released storage (config.encode; see encode.py)
  train     the trainer on config.stage (data from config.data: source h5 | npz | glb | smoke)
  sample    null2geo: 250 respaced ancestral DDPM steps (learned-range variance, x0 clipped), CFG 4 on all four ε
            channels; writes omages (npz), meshes (.obj and .glb) and a preview grid into <workdir>/samples.
            geo2mat: materials for the geometry of geo2mat.geometry (an npz of omages) or of config.data's first
            sample.num_samples shapes; writes textured meshes, preview.png, render.png, summary.json (n2g2m.py)
  evaluate  null2geo: p-FID / p-KID of sampled meshes against the training shapes, per checkpoint step of eval.steps
  n2g2m     geometry from the null2geo run n2g2m.null2geo_workdir, then materials from the geo2mat run
            n2g2m.geo2mat_workdir, then textured meshes, previews and renders into <workdir>/n2g2m (any stage; the
            config's model and unet sections must be those of the two runs, e.g. both variant=smoke)
variant=smoke: a small DiT (patch 2, width 128, depth 2, lr 2e-3 cosine, CFG 1) on 32² omages of axis-aligned
primitives (one box, sphere, torus, cylinder or cone per object, the label its kind, one colour per object) encoded
once at 256² with an 8% margin (smaller margins merge charts after pooling), cached in data.smoke_dir; p-FID with a
small randomly initialised PointNet++ (no weights offline: the numbers only rank checkpoints of one run); a tiny
2-level U-Net for geo2mat, sampled in 50 steps. Patch 4 did not learn at any width tried; patch 2 at 32² does.

  # the smoke run (a few minutes on 2 CPU cores), its samples, and p-FID at an early and the last step
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke --mode sample
  python launch.py --config configs/object_images.py:variant=smoke --workdir runs/omg_smoke --mode evaluate
  # the geo2mat smoke run, its materials for training shapes, then the whole N2G2M pipeline
  python launch.py --config configs/object_images.py:variant=smoke,stage=geo2mat --workdir runs/g2m_smoke
  python launch.py --config configs/object_images.py:variant=smoke,stage=geo2mat --workdir runs/g2m_smoke \
      --mode sample
  python launch.py --config configs/object_images.py:variant=smoke --mode n2g2m --workdir runs/n2g2m_smoke \
      --config.n2g2m.null2geo_workdir=runs/omg_smoke --config.n2g2m.geo2mat_workdir=runs/g2m_smoke
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
  python launch.py --config configs/object_images.py:stage=geo2mat --workdir runs/g2m \
      --config.data.source=h5 --config.data.path=/data/omages/df_p64_m02_res64.h5
  python launch.py --config configs/object_images.py --mode n2g2m --workdir runs/n2g2m \
      --config.n2g2m.null2geo_workdir=runs/n2g --config.n2g2m.geo2mat_workdir=runs/g2m
"""
import ml_collections

from experiments.object_images.encode import encode_config
from mmjax.train.config import base_config, parse_arg

STAGES = ('null2geo', 'geo2mat')


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
  # glb labels may also come from ABO's 3dmodels.csv.gz or listings_<c>.json.gz: the column naming the category
  c.data.label_column = 'product_type'
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

  # stage=geo2mat (and the geo2mat half of --mode n2g2m): imagen-pytorch 1.26's U-Net at the official settings.
  c.unet = ml_collections.ConfigDict()  # Geo2MatConfig keys (geo2mat_unet.py); the label table has 63 rows
  c.unet.dim = 256
  c.unet.dim_mults = (1, 2, 3, 4)
  c.unet.num_resnet_blocks = 3
  c.unet.layer_attns = (False, True, True, True)
  c.unet.layer_cross_attns = (False, True, True, True)
  c.unet.attn_heads = 8
  c.unet.attn_dim_head = 64
  c.unet.text_embed_dim = 768  # the class token (the official label_embed_dim)
  c.unet.max_text_len = 256
  c.unet.num_time_tokens = 2
  c.unet.learned_sinu_pos_emb_dim = 16
  c.unet.resnet_groups = 8
  c.unet.attn_pool_num_latents = 32
  c.unet.attn_pool_max_seq_len = 512
  c.unet.train_label_embed = False  # the official optimiser holds only the U-Net: the table stays at its init

  c.geo2mat = ml_collections.ConfigDict()
  c.geo2mat.cond_drop_prob = 0.1  # the class token is dropped, never the geometry
  c.geo2mat.min_snr_gamma = 5.0  # imagen 1.26's default; 0 turns the min-SNR weight off
  c.geo2mat.num_steps = 1000  # the official sampler runs all `timesteps` (its infer_steps is unused)
  c.geo2mat.cond_scale = 1.0  # no guidance, as the official sampling
  c.geo2mat.dynamic_threshold = 0.95  # imagen's dynamic thresholding percentile; 0 clips x0 to [-1, 1]
  c.geo2mat.geometry = ''  # --mode sample: an .npz of omages [N, S, S, 4 or 12] in [0, 1] (+ labels), e.g. a
  #                          null2geo run's samples/omages.npz; '' = the first sample.num_samples shapes of data.*

  c.n2g2m = ml_collections.ConfigDict()  # --mode n2g2m: the two trained runs (this config's model and unet)
  c.n2g2m.null2geo_workdir = ''
  c.n2g2m.geo2mat_workdir = ''
  c.n2g2m.render_size = 128  # pixels per rendered mesh in render.png

  if arg.stage == 'geo2mat':  # the spec's stage-2 training: Adam (0.9, 0.99), eps 1e-8, lr 1e-4, fp32, EMA 0.999
    c.compute_dtype = 'float32'
    c.ema_decay = 0.999
    c.optim.update(name='adamw', lr=1e-4, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=0.0,
                   schedule='constant')

  if arg.variant == 'smoke':
    c.encode.resolution = 256
    c.data.source = 'smoke'
    c.data.size = 32  # 32² omages (sparse-pooled from 256²): at 64² a smoke-sized DiT's samples stayed noise
    c.data.smoke_margin = 0.08  # charts stay apart after pooling to 32² only with about 2 pooled pixels between them
    c.model.update(patch=2, width=128, depth=2, num_heads=4)
    c.compute_dtype = 'float32'
    c.total_steps = 300
    c.batch_size = 16
    c.log_every = 25
    c.ckpt_every = 50
    c.keep_ckpts = 10
    c.optim.update(lr=2e-3, warmup_steps=20, schedule='cosine')
    c.sample.num_steps = 50
    c.sample.cfg_scale = 1.0  # guidance of an undertrained model amplifies its errors
    c.sample.num_samples = 10
    c.sample.batch_size = 10
    c.eval.steps = (50, 300)
    c.eval.num_samples = 20
    c.eval.num_ref = 20
    c.eval.num_points = 1024
    c.eval.pointnet_width = 16
  if arg.variant == 'smoke':  # geo2mat's smoke: a tiny U-Net (any stage, as --mode n2g2m builds both models)
    c.unet.update(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                  layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, text_embed_dim=16, max_text_len=4,
                  learned_sinu_pos_emb_dim=8, resnet_groups=4, attn_pool_num_latents=4, attn_pool_max_seq_len=8)
    c.geo2mat.num_steps = 50
    c.n2g2m.render_size = 96
    if arg.stage == 'geo2mat':
      c.total_steps = 300
      c.batch_size = 16
      c.ema_decay = 0.99  # 0.999 would leave a 300-step run's EMA mostly at its init
      c.optim.update(lr=1e-3, warmup_steps=20, schedule='constant')
  return c
