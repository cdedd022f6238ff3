"""mmjax.weights."""
