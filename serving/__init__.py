"""Model serving: an HTTP model server with Prometheus metrics and a prediction log."""
