"""mmjax.diffusion."""
