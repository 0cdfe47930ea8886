"""Prefect flows: they only wire the steps in ``tasks/`` together."""
