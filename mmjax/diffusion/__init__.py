"""mmjax.diffusion: noise schedules, respacing, parameterisations, losses, samplers and guidance as pure functions.

`from_diffusers_config(config, num_inference_steps)` builds a sampler from a diffusers scheduler config; every
sampler's `step` takes the step index traced, so `sample(denoise_fn, params, scheduler, noise, guidance=...)` runs
a whole trajectory as one `lax.fori_loop` under `jax.jit`. Losses live in `mmjax.diffusion.losses`.
"""
from mmjax.diffusion.config import from_diffusers_config
from mmjax.diffusion.guidance import Guidance, cfg, combine
from mmjax.diffusion.respacing import respace_betas, space_timesteps
from mmjax.diffusion.sample import sample
from mmjax.diffusion.schedulers import (
  DDIMScheduler,
  DDPMScheduler,
  DPMSolverMultistepScheduler,
  EulerDiscreteScheduler,
  Scheduler,
)
from mmjax.diffusion.schedules import alphas_cumprod, make_betas

__all__ = ['DDIMScheduler', 'DDPMScheduler', 'DPMSolverMultistepScheduler', 'EulerDiscreteScheduler', 'Guidance',
           'Scheduler', 'alphas_cumprod', 'cfg', 'combine', 'from_diffusers_config', 'make_betas', 'respace_betas',
           'sample', 'space_timesteps']
