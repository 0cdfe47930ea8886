"""Release targets: where model versions run and how traffic moves between them.

One interface (``targets.base.ReleaseTarget``), one module per target; the release flow picks one
by name (``targets.base.make_target``).
"""
