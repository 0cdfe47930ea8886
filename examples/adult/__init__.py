"""The UCI Adult income example: its demo (``demo.py``) and its traffic and shift (``traffic.py``)."""
