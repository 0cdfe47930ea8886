"""Where the release reads its figures: one interface (``base.MetricsProvider``), one module per
backend. Prometheus (PromQL over its HTTP API) for the local, KServe and GitOps targets,
CloudWatch for Lambda. Each target makes its provider (``ReleaseTarget.metrics``), knowing what
identifies a slot in its metrics."""
