"""mmjax.nn."""
