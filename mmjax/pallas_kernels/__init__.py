"""mmjax.pallas_kernels."""
