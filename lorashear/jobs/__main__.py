"""``python -m lorashear.jobs REGISTRY_DB JOB_ID``: the worker process entry point (see worker.py)."""
import sys

from .worker import main

sys.exit(main())
