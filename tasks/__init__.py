"""Pipeline steps, one module per step: plain typed logic behind thin Prefect ``@task`` wrappers.

Flows import each step from its module (``from tasks.data import load_dataset``); the step's plain
function is ``<task>.fn``.
"""
