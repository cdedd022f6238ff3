"""mmjax.diffusion: noise schedules, respacing, parameterisations, losses, samplers and guidance as pure functions.

`from_diffusers_config(config, num_inference_steps)` builds a sampler from a diffusers scheduler config; every
sampler's `step` takes the step index traced, so `sample(denoise_fn, params, scheduler, noise, guidance=...)` runs
a whole trajectory as one `lax.fori_loop` under `jax.jit`. Losses live in `mmjax.diffusion.losses`.
"""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'config': ('from_diffusers_config',),
  'guidance': ('Guidance', 'cfg', 'combine'),
  'respacing': ('respace_betas', 'space_timesteps'),
  'sample': ('sample',),
  'schedulers': ('DDIMScheduler', 'DDPMScheduler', 'DPMSolverMultistepScheduler', 'EulerDiscreteScheduler',
                 'Scheduler'),
  'schedules': ('alphas_cumprod', 'make_betas'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
