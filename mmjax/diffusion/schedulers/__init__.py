"""Samplers with one interface: `timesteps`, `init_noise_sigma`, `scale_model_input(sample, i)`,
`init_state(sample)` and `step(state, model_output, i, sample, noise=None) -> (sample, state)`, i traceable."""
from mmjax.diffusion.schedulers.ddim import DDIMScheduler
from mmjax.diffusion.schedulers.ddpm import DDPMScheduler
from mmjax.diffusion.schedulers.dpm_solver import DPMSolverMultistepScheduler, DPMSolverState
from mmjax.diffusion.schedulers.euler import EulerDiscreteScheduler

Scheduler = DDIMScheduler | DDPMScheduler | DPMSolverMultistepScheduler | EulerDiscreteScheduler

__all__ = ['DDIMScheduler', 'DDPMScheduler', 'DPMSolverMultistepScheduler', 'DPMSolverState',
           'EulerDiscreteScheduler', 'Scheduler']
