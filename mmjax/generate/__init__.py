"""mmjax.generate."""
