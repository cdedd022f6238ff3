"""A class-conditional DiT on scikit-learn's digits upsampled to 16x16: the suite's first image generator.

Trained with ε-MSE (+ the learned-range VB term with model.learn_sigma) and an EMA by the shared trainer; the
sample program draws every class from the EMA at each CFG scale of sample.cfg_scales with a DDIM-50 sampler and
reports a real-digits classifier's accuracy on the samples (experiments/dit_digits/README.md has the numbers).

  # under a minute: a tiny model for a few steps, then 2 samples per class
  python launch.py --config configs/dit_digits.py:variant=smoke --workdir runs/dit_smoke
  python launch.py --config configs/dit_digits.py:variant=smoke --workdir runs/dit_smoke --mode sample
  # the default run (see the README for its wall time), then its samples and their accuracy at CFG 1, 2 and 4
  python launch.py --config configs/dit_digits.py --workdir runs/dit_digits
  python launch.py --config configs/dit_digits.py --workdir runs/dit_digits --mode sample
  # other samplers and scales, from the same checkpoint
  python launch.py --config configs/dit_digits.py --workdir runs/dit_digits --mode sample \
      --config.sample.scheduler=DPMSolverMultistepScheduler --config.sample.num_steps=20 \
      --config.sample.cfg_scales='(1.0, 3.0)'
  # DiT's learned sigma (MSE + VB) sampled by ancestral DDPM with the learned-range variance
  python launch.py --config configs/dit_digits.py --workdir runs/dit_sigma --config.model.learn_sigma=True
  python launch.py --config configs/dit_digits.py --workdir runs/dit_sigma --mode sample \
      --config.model.learn_sigma=True --config.sample.scheduler=DDPMScheduler --config.sample.num_steps=250
"""
import ml_collections

from mmjax.train.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant='default')
  if arg.variant not in ('default', 'smoke'):
    raise ValueError(f"variant must be 'default' or 'smoke', got {arg.variant!r}")
  c = base_config()
  c.experiment = 'experiments.dit_digits.experiment'
  c.variant = arg.variant

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 16  # the 8x8 digits, bilinearly upsampled; a multiple of model.patch
  c.data.test_fraction = 0.2  # the same stratified split as vit_digits

  c.model = ml_collections.ConfigDict()
  c.model.patch = 4
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.learn_sigma = False  # a second output channel for the learned-range variance, trained by the VB term
  c.model.class_dropout = 0.1  # probability of training on the null label (classifier-free guidance)

  # The forward process, in diffusers' scheduler-config names (the sample program builds its scheduler from them).
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_train_timesteps = 1000
  c.diffusion.beta_schedule = 'squaredcos_cap_v2'  # or 'linear' / 'scaled_linear' with beta_start, beta_end
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 2e-2
  c.diffusion.prediction_type = 'epsilon'  # or 'v_prediction'
  c.diffusion.min_snr_gamma = 0.0  # > 0: min-SNR-γ loss weighting; 0: off

  c.sample = ml_collections.ConfigDict()
  c.sample.scheduler = 'DDIMScheduler'  # DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistep...
  c.sample.num_steps = 50
  c.sample.eta = 0.0  # DDIM's η
  c.sample.clip_sample = False  # DDPM/DDIM: clip the predicted x0 to [-1, 1] (diffusers' default; it costs CFG here)
  c.sample.cfg_scales = (1.0, 2.0, 4.0)  # 1 = the conditional model without guidance
  c.sample.per_class = 20
  c.sample.seed = 0

  c.total_steps = 3000
  c.batch_size = 64
  c.log_every = 100
  c.eval_every = 1000
  c.ckpt_every = 1000
  c.keep_ckpts = 2
  c.ema_decay = 0.995  # no bias correction: 0.995^3000 leaves no trace of the (adaLN-Zero) init in the EMA
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  if arg.variant == 'smoke':
    c.model.width = 32
    c.model.depth = 2
    c.model.num_heads = 2
    c.total_steps = 30
    c.batch_size = 32
    c.log_every = 5
    c.eval_every = 30
    c.ckpt_every = 30
    c.ema_decay = 0.9
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    c.sample.num_steps = 10
    c.sample.per_class = 2
  return c
