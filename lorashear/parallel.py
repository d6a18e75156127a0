"""Training across processes with Hugging Face ``accelerate``: what the prune and recover runs need of it.

``accelerate launch --num_processes N -m lorashear prune …`` runs the same run in N processes (one per GPU, or
CPU processes over gloo). The runs use accelerate for everything that is not theirs to invent:

- **data parallelism**: the model is ``accelerator.prepare``-d (DistributedDataParallel), so the LoRA gradients
  are all-reduced (averaged) during ``backward``. Every process draws the same global batch (the data order is a
  function of seed and step) and trains on its own rows, so the averaged gradient is the one-process gradient of
  the whole batch; every process then applies the same optimizer step (LHSPG's projections on its own copy of the
  base rows) and the zero set and the weights stay identical everywhere — nothing else needs communicating.
- **gradient accumulation** (``--gradient_accumulation_steps K``): each process splits its rows into K
  micro-batches inside ``accelerator.accumulate``; the global batch (``--batch-size``) stays the same, so K and N
  change memory and speed, not the result.
- **mixed precision** (``--mixed_precision bf16``): the prepared model's forward runs under accelerate's autocast.
  fp16 is refused: it needs a gradient scaler between backward and the optimizer's own use of the gradients
  (LHSPG reads them for saliency), which the runs do not do.

Without ``accelerate launch`` (the CLI, the jobs, the tests) a run uses ``Solo``, which has the same interface and
changes nothing: the single-process path stays bit-for-bit what it was.

Two launch mistakes are caught rather than trained through: several processes on a host without a GPU train on
CPU over gloo (``--device`` left to its default means "cuda when present, else cpu"; accelerate alone would give
each process a one-process run writing the same folder), and a world of N processes that accelerate sets up as
fewer is refused in one line. Each rank watches its launcher and stops when the launcher dies, so killing
``accelerate launch`` does not leave orphaned ranks training.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Iterator

import torch

from .errors import LorashearError

#: how long ranks wait for each other (rank 0 evaluates the dense model while the others wait to start)
WAIT_TIMEOUT = timedelta(hours=6)


class Solo:
    """One process, no accelerate: the interface of ``accelerate.Accelerator`` that the runs use, as no-ops."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    gradient_accumulation_steps = 1
    mixed_precision = "no"
    distributed = False

    def prepare(self, model: Any) -> Any:
        return model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextlib.contextmanager
    def accumulate(self, model: Any) -> Iterator[None]:  # noqa: ARG002
        yield

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:  # noqa: ARG002
        return tensor

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model: Any) -> Any:
        return model


def launched() -> bool:
    """True inside ``accelerate launch`` (or torchrun): then the run goes through an ``Accelerator``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ


def _has_accelerator() -> bool:
    api = getattr(torch, "accelerator", None)
    return bool(api.is_available()) if api is not None else torch.cuda.is_available()


def _stop_with_launcher(every_s: float = 1.0) -> None:
    """Stop this rank (SIGTERM, then a hard exit) when its launcher — the parent process — is gone: a killed
    ``accelerate launch`` must not leave its ranks training (and writing the run folder) on their own."""
    parent = os.getppid()
    if parent <= 1:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        print(f"lorashear: the launcher (pid {parent}) is gone; rank {os.environ.get('RANK', '?')} stops",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os._exit(143)

    threading.Thread(target=watch, name="lorashear-launcher-watch", daemon=True).start()


def accelerator(device: str | None = None) -> Any:
    """An ``accelerate.Accelerator`` when launched by accelerate, else ``Solo()``. Refuses what the runs cannot
    do correctly (fp16 / fp8 mixed precision, a world accelerate did not set up), in one line."""
    if not launched():
        return Solo()
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # the default device is "cuda when present, else cpu": without a GPU, the ranks train on CPU over gloo
    cpu = device == "cpu" or (device is None and world > 1 and not _has_accelerator())
    acc = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=WAIT_TIMEOUT)])
    if world > 1 and acc.num_processes != world:
        raise LorashearError(f"WORLD_SIZE={world} but accelerate set up {acc.num_processes} process(es) on "
                             f"{acc.device} (no distributed backend for it): add --device cpu to train the {world} "
                             "processes on CPU over gloo")
    if world > 1:
        _stop_with_launcher()
    acc.distributed = acc.num_processes > 1
    kind = getattr(acc.distributed_type, "value", str(acc.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA"):
        raise LorashearError(f"accelerate {kind} is not supported yet: LHSPG projects whole base-weight rows, which "
                             "sharded weights do not hold (docs/scale.md); use data parallelism (--multi_gpu)")
    if acc.mixed_precision not in ("no", "bf16"):
        raise LorashearError(f"mixed precision {acc.mixed_precision} is not supported (it needs a gradient scaler "
                             "before the optimizer reads the gradients); use --mixed_precision bf16 or no")
    if device not in (None, "cpu") and acc.device.type != torch.device(device).type:
        raise LorashearError(f"--device {device} but accelerate placed this process on {acc.device}")
    return acc


def rows_per_micro_batch(batch_size: int, acc: Any) -> int:
    """Rows of the global batch each process runs per micro-batch; the batch must split evenly, so that the
    mean of the per-process means is the mean over the whole batch."""
    n, k = acc.num_processes, acc.gradient_accumulation_steps
    if batch_size % (n * k):
        raise LorashearError(f"--batch-size {batch_size} must be a multiple of processes × gradient accumulation "
                             f"steps = {n} × {k} (every process trains on the same number of rows)")
    return batch_size // (n * k)


def micro_batches(ids: torch.Tensor, acc: Any) -> list[torch.Tensor]:
    """This process's rows of a global batch, split into its gradient-accumulation micro-batches."""
    m = rows_per_micro_batch(ids.shape[0], acc)
    k = acc.gradient_accumulation_steps
    mine = ids[acc.process_index * m * k:(acc.process_index + 1) * m * k]
    return [mine[i * m:(i + 1) * m] for i in range(k)]


def mean_over_processes(value: torch.Tensor, acc: Any) -> float:
    """The mean of a per-process scalar over all processes (the global batch's loss, for the log)."""
    if acc.num_processes == 1:
        return float(value.item())
    return float(acc.reduce(value.detach().reshape(1).to(acc.device), "mean").item())


__all__ = ["Solo", "accelerator", "launched", "rows_per_micro_batch", "micro_batches", "mean_over_processes"]
