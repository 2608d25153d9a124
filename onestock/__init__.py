"""onestock: one inventory for every sales channel, decided at flash-sale peaks without oversell."""

import os

# One BLAS thread, set before anything imports numpy (nothing here needs more): `onestock
# run` forks its workers only from a process with a single thread (dataflows/runner.py),
# whichever way it was started (`python -m onestock`, the `onestock` script, the image)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

__version__ = "0.1.0"
