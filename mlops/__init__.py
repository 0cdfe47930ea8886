"""mlops: CI/CD for machine learning on Prefect. Glue: settings, config, CLI, local stack."""

__version__ = "0.1.0"
