"""The Prefect project layer: thin ``@task`` wrappers over the library, one module per stage.

Not installed: flows import it from the project folder (Prefect loads flows from there too).
"""

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

#: A pipeline step: a Prefect task that neither caches nor persists its result unless it says so.
step = partial(task, cache_policy=NO_CACHE, persist_result=False)
