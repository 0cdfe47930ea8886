"""``python -m mlops.cli``: the ``mlops`` command (what the fork server's model servers run)."""

from mlops.cli import main

main()
