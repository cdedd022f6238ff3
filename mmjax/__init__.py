"""mmjax: JAX/Flax reimplementations of twelve 2024 multimodal papers."""
