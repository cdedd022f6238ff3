"""guided-diffusion's timestep respacing: run a T-step model on a subset of its timesteps.

`space_timesteps(1000, "250")` keeps 250 evenly strided timesteps (0 and 999 included); `"ddim50"` keeps
range(0, T, k) for the stride k that gives exactly 50; `"10,15,20"` splits [0, T) into three equal sections and
strides each. The respaced chain has betas β'_i = 1 − ᾱ[t_i]/ᾱ[t_{i−1}] (ᾱ[t_{−1}] = 1), so ᾱ'_i = ᾱ[t_i] exactly;
the model is still called with the original timestep t_i. The sampler over it is
`DDPMScheduler.create(np.cumprod(1 - betas), space_timesteps(T, "250")[::-1], variance_type=...)`, with ᾱ in
float64 as guided-diffusion keeps it.
"""
import numpy as np


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> np.ndarray:
  """The kept timesteps, ascending: [N] int64.

  Raises ValueError when a section is asked for more steps than it has, or no stride gives the "ddimN" count.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith('ddim'):
      count = int(section_counts[len('ddim'):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
          return np.arange(0, num_timesteps, stride, dtype=np.int64)
      raise ValueError(f'space_timesteps: no integer stride gives exactly {count} steps out of {num_timesteps}')
    section_counts = [int(c) for c in section_counts.split(',')]
  size_per, extra = divmod(num_timesteps, len(section_counts))
  kept, start = [], 0
  for k, count in enumerate(section_counts):
    size = size_per + (1 if k < extra else 0)
    if size < count:
      raise ValueError(f'space_timesteps: section {k} has {size} timesteps, cannot keep {count}')
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    # The position accumulates by repeated addition (not k·stride) so that the rounding of exact halves matches
    # guided-diffusion, whose checkpoints were trained and sampled with these very timesteps.
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return np.array(sorted(set(kept)), np.int64)


def respace_betas(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
  """Betas of the respaced chain over ascending `timesteps` [N]: 1 − ᾱ[t_i]/ᾱ[t_{i−1}], float64 [N]."""
  kept = np.asarray(alphas_cumprod, np.float64)[np.asarray(timesteps)]
  previous = np.concatenate([[1.0], kept[:-1]])
  return 1.0 - kept / previous
