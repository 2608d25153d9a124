"""``python -m onestock`` runs the command line."""

import os

# One BLAS thread before numpy is imported: nothing here needs more, and `onestock run` forks
# its workers only from a process with a single thread (dataflows/runner.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from onestock.cli import main  # noqa: E402

main()
