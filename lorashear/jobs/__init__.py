"""Jobs: a SQLite registry of long-running work and the worker processes that do it.

The app and the CLI submit jobs here; each job runs in its own ``python -m lorashear.jobs`` process
and reports progress, metrics and artifacts through the registry (see ``docs/app.md``).
"""
from .kinds import BUILTIN as KINDS, JobKind, JobParamError, Param, validate
from .launcher import cancel, launch, reap, resume, submit, wait, worker_alive
from .registry import ACTIVE, CANCELLED, FAILED, FINAL, QUEUED, RUNNING, SUCCEEDED, Job, Registry
from .worker import Cancelled, JobContext

__all__ = [
    "KINDS", "JobKind", "JobParamError", "Param", "validate",
    "cancel", "launch", "reap", "resume", "submit", "wait", "worker_alive",
    "ACTIVE", "CANCELLED", "FAILED", "FINAL", "QUEUED", "RUNNING", "SUCCEEDED", "Job", "Registry",
    "Cancelled", "JobContext",
]
