"""The run scaffold that prune and recover share: the run folder, its checkpoints, the seeded batch stream, the
NaN stop and the one training step. A run stage (``prune.run``, ``recover.run``) keeps only what is its own —
what a step trains on and what happens between steps; everything a user relies on to stop, resume and trust a
run is written once, here, so the two stages cannot drift apart.

The run folder::

    OUT/run.json        format, what was run, settings, status (running / finished / failed / interrupted),
                        started / finished time, the first line of the error when it stopped
    OUT/checkpoints/    step-N/ (N = optimizer steps taken): weights.safetensors (LoRA factors and every base
                        tensor the optimizer changed), optimizer.pt (optimizer state and torch's RNG state),
                        state.json (N and the stage's own progress); written to a temporary folder and renamed,
                        the newest two kept

Rules: a new run needs an empty folder (a folder holding another run or other files is refused before anything is
written); ``resume`` needs the same settings and a run that did not finish; a KeyboardInterrupt is recorded as
``interrupted``, any other error as ``failed``. Data order is a function of (seed, step) only (``batch_seed``),
so a resumed run draws exactly the batches the uninterrupted run would have drawn.

``train_step`` is the one optimizer step of every training loop (the pruning run, the dense reference, recovery):
alone it is ``loss.backward(); opt.step()``; under ``accelerate launch`` each process runs its rows of the same
global batch in gradient-accumulation micro-batches (``lorashear.parallel``), weighted so that the all-reduced
gradient is the one-process gradient of the whole batch.

This module sits below prune and recover and imports neither.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from . import parallel
from .adapters import is_lora_param
from .errors import LorashearError
from .jsonio import keep_newest, numbered_dirs, write_dir_atomic, write_json_atomic

CHECKPOINTS = "checkpoints"
PREFIX = "step-"  # checkpoints/step-N
KEEP = 2  # checkpoints kept: the newest two (a crash while the newest is written leaves the one before)
#: checkpoint folders of lorashear before this scaffold (recover wrote checkpoints/ckpt-K/lora.safetensors)
LEGACY_PREFIX = "ckpt-"

#: ``loss_fn(model, batch, reduction)``: the loss over the batch's labelled tokens, ``"mean"`` or ``"sum"``
LossFn = Callable[[Any, Mapping[str, torch.Tensor], str], torch.Tensor]


# ------------------------------------------------------------------------------------------- the batch stream
def batch_seed(seed: int, step: int) -> int:
    """The seed of the batch a run draws at ``step``: a function of (seed, step) only, so a resumed run (or one
    with another number of processes) draws the same batches. Streams that must not overlap the main one (the
    instruction stage) add a large offset to ``step``."""
    return seed * 1_000_003 + step


# --------------------------------------------------------------------------------------------- learning rate
def scheduled_lr(lr: float, schedule: str, step: int, start: int, end: int) -> float:
    """The learning rate of step ``step`` (0-based) of a run whose decay spans steps ``start``..``end - 1``:
    ``lr`` before ``start`` and for ``constant``; ``cosine``: ``lr · ½(1 + cos(π (step − start) / (end − start)))``
    — ``lr`` at ``start``, a small positive value at the last step (transformers' cosine schedule without warm-up).
    A pure function of the step, so a resumed run trains at the same rates without a scheduler's state."""
    if schedule == "constant" or step < start or end <= start:
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step - start, end - start) / (end - start)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``opt`` at ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------------- run folder
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class RunFolder:
    """``OUT/run.json`` of one run and its status. Build it with ``open_run`` (which checks, writing nothing);
    ``running()`` records the run's lifecycle around the work."""

    def __init__(self, out: Path, info: dict, previous: dict | None):
        self.out, self.info, self.previous = out, info, previous

    @property
    def run_file(self) -> Path:
        return self.out / "run.json"

    def _progress_made(self) -> bool:
        """Anything besides run.json in the folder (a checkpoint, a plan, a model)."""
        return any(p.name != "run.json" and not p.name.startswith(".") for p in self.out.iterdir())

    @contextlib.contextmanager
    def running(self, main: bool = True) -> Iterator["RunFolder"]:
        """Write ``status: running``, run the body, then ``finished``; on an exception ``interrupted``
        (KeyboardInterrupt) or ``failed``, with the first line of the error, and re-raise. Only the main process
        writes (``main``); the others run the body alone."""
        created = not self.out.exists()
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_file, self.info)
        try:
            yield self
        except BaseException as exc:
            if main and self.previous is None and not self._progress_made():
                # failed before anything worth keeping: leave no folder (or no run.json) behind, so the corrected
                # command can start in the same --out without --resume
                if created:
                    shutil.rmtree(self.out, ignore_errors=True)
                else:
                    self.run_file.unlink(missing_ok=True)
            elif main:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                self.info.update(status=status, message=first)
                write_json_atomic(self.run_file, self.info)
            raise
        if main:
            self.info.update(status="finished", finished=_now())
            write_json_atomic(self.run_file, self.info)


def open_run(out: str | Path, fmt: str, settings: dict, *, resume: bool, what: str = "run",
             defaults: dict | None = None, **fields: Any) -> RunFolder:
    """Check ``out`` for a run with ``settings`` (``fields``: what else run.json records, e.g. the model) and
    return its ``RunFolder``; nothing is written. Refused, in one line: a new run in a folder that holds something;
    ``resume`` with no run.json, of another kind of run, with other settings, of a finished run, or of checkpoints
    in an older layout. ``defaults``: the schema's defaults — a setting an older run.json does not record (an
    option added since) counts as its default, which is how that run behaved, so the run still resumes."""
    out = Path(out)
    run_file = out / "run.json"
    prev = None
    if resume:
        if not run_file.is_file():
            raise LorashearError(f"{out}: nothing to resume (no run.json)")
        try:
            prev = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            raise LorashearError(f"{run_file}: malformed run.json; cannot resume") from None
        if prev.get("format") != fmt:
            raise LorashearError(f"{out}: holds a {prev.get('format') or 'unknown'} run, not a {what} "
                                 f"({fmt}); nothing to resume")
        old = {**{k: v for k, v in (defaults or {}).items() if k in settings}, **(prev.get("settings") or {})}
        if old != settings:
            diff = sorted(set(k for k, v in settings.items() if old.get(k) != v) | (set(old) - set(settings)))
            raise LorashearError(f"{out}: holds a {what} with other settings ({', '.join(diff)}); "
                                 "resume with the same options")
        if prev.get("status") == "finished":
            raise LorashearError(f"{out}: that {what} already finished; nothing to resume")
        legacy = numbered_dirs(out / CHECKPOINTS, LEGACY_PREFIX)
        if legacy:
            raise LorashearError(f"{out}: its checkpoints ({CHECKPOINTS}/{legacy[-1].name}) are in the layout of an "
                                 "older lorashear, which this version does not resume; start again in an empty --out")
    elif out.exists() and any(out.iterdir()):
        held = "a different run" if run_file.is_file() else "other files"
        raise LorashearError(f"{out}: already holds {held}; choose an empty --out (or --resume the {what} in it)")
    info = {"format": fmt, **fields, "settings": settings, "status": "running",
            "started": prev.get("started", _now()) if prev else _now(), "message": None}
    return RunFolder(out, info, prev)


# ---------------------------------------------------------------------------------------------- checkpoints
def resume_latest(out: str | Path, model: Any, opt: Any, progress: Callable[[float, str], None] | None = None
                  ) -> tuple[int, dict] | None:
    """Load the newest checkpoint of ``out`` into ``model`` and ``opt``: (its step, its state), or None when the run
    has none yet (it then starts from step 0)."""
    ck = latest_checkpoint(out)
    if ck is None:
        return None
    step, state = load_checkpoint(ck, model, opt)
    if progress is not None:
        progress(0.1, f"resumed from {ck.name}")
    return step, state


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete ``OUT/checkpoints/step-N`` (a folder being written has a temporary name)."""
    found = numbered_dirs(Path(out) / CHECKPOINTS, PREFIX)
    return found[-1] if found else None


def checkpoint_tensors(model: torch.nn.Module, changed: Iterable[torch.Tensor] = ()) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold of ``model`` to resume exactly: the LoRA factors, and every base tensor in
    ``changed`` (a pruning optimizer writes base rows: ``changed_tensors()``). Tied tensors once, by first name."""
    ids = {id(t) for t in changed}
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        if is_lora_param(name) or id(p) in ids:
            out[name] = p.detach().contiguous().cpu()
            seen.add(id(p))
    return out


def save_checkpoint(out: str | Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    state: Mapping[str, Any], *, changed: Iterable[torch.Tensor] = ()) -> Path:
    """Write ``OUT/checkpoints/step-{step}`` atomically (model tensors, optimizer + RNG state, ``state`` as JSON
    beside ``step``) and keep the newest two. Returns the folder."""
    from safetensors.torch import save_file

    if "step" in state:
        raise ValueError("'step' is the checkpoint's own key; keep the stage's counters under another name")
    tensors = checkpoint_tensors(model, changed)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "weights.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))

    final = write_dir_atomic(Path(out) / CHECKPOINTS / f"{PREFIX}{step}", write)
    keep_newest(Path(out) / CHECKPOINTS, PREFIX, KEEP)
    return final


def load_checkpoint(ck: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore ``model``'s tensors, ``opt`` and torch's RNG from ``ck``; returns (step, the stage's state)."""
    from safetensors.torch import load_file

    ck = Path(ck)
    tensors = load_file(str(ck / "weights.safetensors"))
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, t in tensors.items():
            if name not in params:
                raise LorashearError(f"{ck}: checkpoint tensor '{name}' is not in this model; "
                                     "was it written by another run?")
            params[name].data.copy_(t.to(params[name].device))
    blob = torch.load(ck / "optimizer.pt", weights_only=True)
    opt.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["rng"])
    state = json.loads((ck / "state.json").read_text())
    return int(state.pop("step")), state


# ----------------------------------------------------------------------------------------------- NaN stop
def stop_if_not_finite(loss: float, step: int, out: str | Path | None = None) -> None:
    """A loss that is NaN or infinite stops the run (the weights are lost from here on) with one line naming the
    step and the last good checkpoint in ``out`` (the run folder; ``None``: a run without checkpoints)."""
    if math.isfinite(loss):
        return
    ck = latest_checkpoint(out) if out is not None else None
    if ck is not None:
        where = f"the last good checkpoint ({ck.name}) is in {ck.parent}; lower --lr and --resume"
    elif out is not None:
        where = "no checkpoint had been written yet; lower --lr and start again"
    else:
        where = "lower --lr and start again"
    raise LorashearError(f"loss became {loss} at step {step}: stopped; {where}")


# --------------------------------------------------------------------------------------------- train step
def labelled_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens that carry a loss: next-token targets (labels shifted by one) that are not -100."""
    return int((batch["labels"][:, 1:] != -100).sum())


def causal_lm_loss(model: Any, batch: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over ``batch``'s labelled tokens: the model's own loss (``mean``), or their sum."""
    if reduction == "mean":
        return model(**batch, use_cache=False).loss
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["labels"][:, 1:],
                                             ignore_index=-100, reduction="sum")


def train_step(model: Any, opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor], step: int, *,
               loss_fn: LossFn = causal_lm_loss, acc: Any = None, out: str | Path | None = None) -> float:
    """One optimizer step on the global ``batch`` (``input_ids``, ``labels``, optional ``attention_mask``, on
    the model's device); returns the batch's loss. ``step``: the index of this step (named if the loss is not
    finite, see ``stop_if_not_finite`` with the run folder ``out``).

    Alone (one process, no accumulation) the loss is ``loss_fn``'s mean over the batch. Under accelerate each
    process runs its rows in micro-batches with the loss *sum* of its tokens divided by the global count of
    labelled tokens, times processes × micro-batches (which DDP's averaging and accelerate's division undo): the
    all-reduced gradient is the one-process gradient of the whole batch even when rows carry different numbers of
    labelled tokens (instruction data, where prompts carry no loss). Every process sees the same loss value, so
    all stop together on a NaN."""

    acc = acc or parallel.Solo()
    if acc.num_processes == 1 and acc.gradient_accumulation_steps == 1:
        loss_t = loss_fn(model, batch, "mean")
        acc.backward(loss_t)
        loss = float(loss_t.item())
    else:
        n_global = labelled_tokens(batch)
        scale = acc.num_processes * acc.gradient_accumulation_steps / max(n_global, 1)
        parts = {k: parallel.micro_batches(v, acc) for k, v in batch.items()}
        total = torch.zeros((), device=batch["labels"].device)
        for i in range(acc.gradient_accumulation_steps):
            with acc.accumulate(model):
                part_loss = loss_fn(model, {k: v[i] for k, v in parts.items()}, "sum")
                acc.backward(part_loss * scale)
            total = total + part_loss.detach()
        loss = parallel.mean_over_processes(total, acc) * acc.num_processes / max(n_global, 1)
    stop_if_not_finite(loss, step, out)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


__all__ = ["RunFolder", "open_run", "batch_seed", "latest_checkpoint", "checkpoint_tensors", "save_checkpoint",
           "load_checkpoint", "stop_if_not_finite", "labelled_tokens", "causal_lm_loss", "train_step"]
