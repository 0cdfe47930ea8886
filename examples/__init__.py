"""The worked examples: configs, data with credit, and the demo script of each. Not installed
(pyproject installs only ``mlops``); a package so tests and benchmarks, run from the project
root, import an example's code as ``examples.<name>.<module>``."""
