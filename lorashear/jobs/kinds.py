"""Job kinds: what each job needs as parameters, how those are checked, and which function runs it.

A kind is data, not code: the app builds its forms from ``JobKind.params`` and the worker imports
``JobKind.entry`` (``"module:function"``) in its own process, so the Dash process never runs the work. A kind
whose library call has not landed yet has ``entry=None`` and says why it is unavailable; it is listed so the
UI can show it disabled, never run with placeholder results.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LorashearError
from ..prune.names import METHODS as METHOD_NAMES, TRAINING_FREE


class JobParamError(LorashearError):
    """Invalid job parameters; ``errors`` maps each bad field to its message (shown next to the field)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass(frozen=True)
class Param:
    """One form field. ``type``: text | path | file | dir | int | float | bool | choice."""

    name: str
    label: str
    type: str = "text"
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    help: str = ""


@dataclass(frozen=True)
class JobKind:
    """A kind of job the registry can run."""

    name: str
    label: str
    description: str
    params: tuple[Param, ...] = ()
    entry: str | None = None  # "module:function"; None while the library call does not exist
    requires: tuple[str, ...] = ()  # "module" or "module:attr" that must import for the kind to run
    unavailable_reason: str = ""
    resumable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def availability(self) -> tuple[bool, str]:
        """(True, "") when the kind can run now; otherwise (False, why)."""
        if self.entry is None:
            return False, self.unavailable_reason or "not available yet"
        for req in self.requires:
            module, _, attr = req.partition(":")
            try:
                if importlib.util.find_spec(module) is None:
                    return False, f"not available yet: {module} does not exist"
                mod = importlib.import_module(module)
            except Exception as exc:  # a half-landed module must not break the app
                return False, f"not available: importing {module} failed ({exc.__class__.__name__}: {exc})"
            if attr and not hasattr(mod, attr):
                return False, f"not available yet: {module}.{attr} does not exist"
        return True, ""


MODEL_PARAMS = ("model", "source", "dense")  # also take a named model (models.NAMED) or a .gguf file


def _check_one(p: Param, raw: Any) -> Any:
    """Convert and check one value; raise ValueError with a user-facing message."""
    if p.type == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (list, tuple)):  # a Dash checklist gives a list
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off", ""):
            return False
        if raw in (0, 1):
            return bool(raw)
        raise ValueError("must be true or false")
    text = raw.strip() if isinstance(raw, str) else raw
    if p.type in ("int", "float"):
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if p.type == "int":
            if value != int(value):
                raise ValueError("must be a whole number")
            value = int(value)
        if p.min is not None and value < p.min:
            raise ValueError(f"must be ≥ {p.min:g}")
        if p.max is not None and value > p.max:
            raise ValueError(f"must be ≤ {p.max:g}")
        return value
    if not isinstance(text, str):
        raise ValueError("must be text")
    if p.type == "choice":
        if text not in p.choices:
            raise ValueError(f"must be one of {', '.join(p.choices)}")
        return text
    if p.type in ("path", "file", "dir"):
        if p.name in MODEL_PARAMS and isinstance(text, str):
            from ..models import NAMED

            here = Path(text)
            if (text in NAMED or text == "demo") and not here.is_file() and not (here / "config.json").is_file():
                # a named model (also when run from the repo root, where ./demo is the assets folder): the job
                # resolves it (converting it once) through the one loader
                return text
            if text.lower().endswith(".gguf"):
                gpath = Path(text).expanduser()
                if not gpath.is_file():
                    raise ValueError(f"{text} does not exist")
                return str(gpath.resolve())  # a GGUF file: converted once into a cached folder by the loader
        path = Path(text).expanduser()
        if not path.exists():
            raise ValueError(f"{text} does not exist")
        if p.type == "file" and not path.is_file():
            raise ValueError(f"{text} is not a file")
        if p.type == "dir" and not path.is_dir():
            raise ValueError(f"{text} is not a directory")
        return str(path.resolve())
    return text


def preflight(clean: dict[str, Any]) -> dict[str, str]:
    """What a job would refuse in its first seconds, checked before it launches, with the CLI's messages: a model
    folder without ``config.json`` (or a malformed one), a data spec that names nothing (``data=nonsense``,
    ``NAME=/missing.jsonl``), a sequence length beyond the model's context. Reads configs only, never weights."""
    from ..data import check_data_spec, check_seq_len
    from ..errors import LorashearError
    from ..loading import load_config

    errors: dict[str, str] = {}
    config = None
    for name in ("model", "dense", "pruned"):
        value = clean.get(name)
        if value == "demo":
            from ..data import DEMO_MODEL_DIR

            value = str(DEMO_MODEL_DIR)
        path = Path(value) if isinstance(value, str) else None
        if path is None or not path.is_dir() or (path / "adapter_config.json").exists():
            continue  # a named model, a .gguf file or an adapter: the loader checks those
        if not (path / "config.json").is_file():
            errors[name] = f"{path} is not a Hugging Face model folder (no config.json)"
            continue
        try:
            cfg = load_config(path)
        except LorashearError as exc:
            errors[name] = str(exc)
            continue
        if config is None:
            config = cfg
    for name in ("data",):
        value = clean.get(name)
        if not isinstance(value, str):
            continue
        try:
            for spec in [s for s in value.split(",") if s.strip()]:
                check_data_spec(spec)
        except LorashearError as exc:
            errors[name] = str(exc)
    if config is not None and isinstance(clean.get("seq_len"), int):
        try:
            check_seq_len(clean["seq_len"], config)
        except LorashearError as exc:
            errors["seq_len"] = str(exc)
    return errors


def _blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


def validate(kind: JobKind, raw: dict[str, Any]) -> dict[str, Any]:
    """Return clean parameters or raise ``JobParamError`` naming every bad field.

    Unknown keys are errors too: a typo in a scripted submission must not be silently ignored.
    """
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    known = {p.name for p in kind.params}
    for key in raw:
        if key not in known:
            errors[key] = f"unknown parameter for {kind.name} jobs"
    for p in kind.params:
        value = raw.get(p.name)
        if _blank(value) and p.type != "bool":
            if p.required:
                errors[p.name] = "required"
            elif p.default is not None:
                clean[p.name] = p.default
            continue
        try:
            clean[p.name] = _check_one(p, value if value is not None else p.default)
        except ValueError as exc:
            errors[p.name] = str(exc)
    for name, msg in preflight(clean).items():  # on the fields that passed their own checks
        errors.setdefault(name, msg)
    if not errors and "check" in kind.extra:
        errors.update(kind.extra["check"](clean))
    if errors:
        raise JobParamError(errors)
    return clean


# ------------------------------------------------------------------------------------------- built-ins
def _graph_check(clean: dict[str, Any]) -> dict[str, str]:
    src = Path(clean["source"])
    if src.is_dir() and not (src / "config.json").exists() and not (src / "adapter_config.json").exists():
        return {"source": f"{src} has no config.json (not a Hugging Face model directory)"}
    if src.is_file() and src.suffix.lower() == ".gguf":
        return {}
    if src.is_file() and src.suffix != ".json":
        return {"source": "a file source must be a config .json or a .gguf model"}
    if src.is_file() and not clean.get("meta"):
        return {"meta": "a config file has no weights: tick 'meta' for structure-only tracing"}
    return {}


GRAPH = JobKind(
    name="graph",
    label="Graph",
    description="Trace a model into its operator graph and find its removable groups (graph.json, groups.json).",
    params=(
        Param("source", "Model directory or config JSON", "path", required=True,
              help="a Hugging Face model directory, or a config .json with 'meta'"),
        Param("meta", "Meta device (structure only, no weights)", "bool", default=False),
    ),
    entry="lorashear.jobs.graph_job:run",
    requires=("lorashear:trace", "lorashear:find_groups", "lorashear:save_groups"),
    extra={"check": _graph_check},
)

EVAL = JobKind(
    name="eval",
    label="Evaluate",
    description="Perplexity per data source (short: 128-token windows; long: min(2048, context)) and cost "
                "(parameters, MACs/token, latency, throughput) of a model folder — dense, pruned or recovered.",
    params=(
        Param("model", "Model directory", "dir", required=True, help="a Hugging Face model folder"),
        Param("data", "Data sources", "text", default="demo",
              help="comma-separated: demo (demo corpus, validation), demo:test, or NAME=PATH"),
        Param("protocol", "Perplexity protocol", "choice", default="short", choices=("short", "long", "both")),
        Param("max_tokens", "Max tokens per source", "int", min=2,
              help="score only the first N tokens of each source (blank: all)"),
        Param("cost", "Measure cost (parameters, MACs, latency, throughput)", "bool", default=True),
        Param("threads", "CPU threads", "int", min=1, max=1024,
              help="torch's CPU threads (blank: one per core); 1 keeps timings meaningful on a busy, shared CPU"),
        Param("device", "Device", "choice", default="auto", choices=("auto", "cpu", "cuda")),
    ),
    entry="lorashear.jobs.eval_job:run",
    requires=("lorashear.evaluate:evaluate_perplexity", "lorashear.evaluate:measure_cost",
              "lorashear.data:load_sources"),
)

ANALYZE = JobKind(
    name="analyze", label="Analyze",
    description="Knowledge distribution: how much each unit, layer and group matters on calibration text "
                "(ablation: measured loss increase, slow; lora-taylor: LoRA-gradient estimate; taylor: "
                "LLM-Pruner's Taylor scores; magnitude: weight norms, no data).",
    params=(
        Param("model", "Model directory", "dir", required=True, help="a Hugging Face model folder"),
        Param("estimator", "Estimator", "choice", default="lora-taylor",
              choices=("lora-taylor", "ablation", "taylor", "magnitude")),
        Param("data", "Calibration data", "text", default="demo",
              help="comma-separated: demo, demo:test, or NAME=PATH"),
        Param("samples", "Calibration windows", "int", default=16, min=1, max=100000),
        Param("seq_len", "Tokens per window", "int", default=128, min=2, max=1_000_000),
        Param("seed", "Seed", "int", default=0, min=0),
        Param("gamma", "γ: mark the top fraction unprunable", "float", min=0.0, max=0.999,
              help="blank: mark nothing"),
        Param("select", "γ counts", "choice", default="group", choices=("group", "layer", "unit"),
              help="node groups (one layer's attention or MLP: the paper's), layers, or single units"),
        Param("scope", "Units ranked", "choice", default="global", choices=("global", "group"),
              help="γ over units: across all groups, or within each group"),
        Param("by", "Rank by", "choice", default="density", choices=("density", "score"),
              help="score per parameter, or total score"),
        Param("device", "Device", "choice", default="auto", choices=("auto", "cpu", "cuda")),
    ),
    entry="lorashear.jobs.analyze_job:run",
    requires=("lorashear.knowledge:analyze", "lorashear.knowledge:calibration_data", "lorashear.loading:load_model"),
    unavailable_reason="not available yet: the knowledge analysis (lorashear.knowledge) has not landed",
)
def _prune_check(clean: dict[str, Any]) -> dict[str, str]:
    errors = {}
    kinds = [k.strip() for k in str(clean.get("kinds") or "").split(",") if k.strip()]
    from ..prune.names import PLAN_KINDS

    bad = [k for k in kinds if k not in PLAN_KINDS]
    if bad or not kinds:
        errors["kinds"] = f"unknown group kind(s) {bad or '(none)'}; use {', '.join(PLAN_KINDS)}"
    if clean.get("gamma") is not None and not clean.get("knowledge"):
        errors["gamma"] = "γ needs a knowledge report"
    if clean.get("steps") == 0 and (clean.get("method") or "lhspg") not in TRAINING_FREE:
        errors["steps"] = f"0 steps (no training) only for {', '.join(TRAINING_FREE)}"
    return errors


PRUNE = JobKind(
    name="prune", label="Prune",
    description="Structured pruning with LHSPG on LoRA adaptors to a parameter ratio: warm-up, progressive periods, "
                "then the smaller model (save_pruned), its plan and a run report with perplexity before/after.",
    params=(
        Param("model", "Model directory", "dir", required=True, help="a Hugging Face model folder (or a pruned one)"),
        Param("ratio", "Target ratio of parameters to remove", "float", default=0.2, required=True, min=0.001, max=0.999),
        Param("method", "Method", "choice", default="lhspg", choices=METHOD_NAMES,
              help="lhspg, or a baseline on the same groups and budget (docs/baselines.md)"),
        Param("kinds", "Group kinds", "text", default="attention,mlp", help="comma-separated: attention, query_heads (GQA), mlp, hidden"),
        Param("allocation", "Allocation", "choice", default="global", choices=("global", "uniform")),
        Param("layers", "Layer range", "text", help="START:STOP, e.g. 1:5 (blank: all layers)"),
        Param("align", "Align widths to a multiple of", "int", min=1, help="blank: no alignment"),
        Param("knowledge", "Knowledge report", "file", help="protect the top γ of this report"),
        Param("gamma", "γ: protect the top fraction of node groups", "float", min=0.0, max=0.999),
        Param("data", "Training data", "text", default="demo", help="comma-separated: demo or NAME=PATH"),
        Param("steps", "Optimizer steps (in all)", "int", default=200, min=0, max=10_000_000,
              help="0: no training (one-shot methods only: llm-pruner, flap, magnitude, random)"),
        Param("batch_size", "Batch size", "int", default=4, min=1, max=4096),
        Param("seq_len", "Tokens per sequence", "int", default=128, min=2, max=1_000_000),
        Param("lr", "Learning rate", "float", default=2e-4, min=1e-8, max=1.0),
        Param("epsilon", "Half-space ε", "float", default=0.0, min=0.0, max=0.999),
        Param("eval_tokens", "Evaluation tokens per source", "int", default=16384, min=256),
        Param("seed", "Seed", "int", default=0, min=0),
        Param("device", "Device", "choice", default="auto", choices=("auto", "cpu", "cuda")),
    ),
    entry="lorashear.jobs.prune_job:run",
    requires=("lorashear.prune:prune",),
    resumable=True,
    extra={"check": _prune_check},
)
RECOVER = JobKind(
    name="recover", label="Recover",
    description="Dynamic knowledge recovery of a pruned model: LoRA rounds on a multi-source mixture whose weights "
                "follow each source's deviation from the dense model, then instruction tuning with early stopping.",
    params=(
        Param("pruned", "Pruned model directory", "dir", required=True, help="written by a Prune job (its run/model)"),
        Param("dense", "Dense model directory", "dir", help="blank: the source the pruned model's sidecar names"),
        Param("data", "Sources", "text", default="demo", help="demo (three sources with validation splits)"),
        Param("mixture", "Mixture", "choice", default="dynamic", choices=("dynamic", "static")),
        Param("eta", "Temperature η", "float", default=1.0, min=0.0, max=100.0),
        Param("floor", "Floor c", "float", default=0.1, min=0.0, max=1.0),
        Param("tokens", "Stage-1 token budget", "int", default=102400, min=1),
        Param("round_steps", "Steps per round", "int", default=25, min=1),
        Param("instructions", "Instructions (stage 2)", "text", default="demo", help="demo, a path, or none"),
        Param("instruct_steps", "Instruction steps", "int", default=100, min=0),
        Param("eval_tokens", "Evaluation tokens per source", "int", default=16384, min=256),
        Param("seed", "Seed", "int", default=0, min=0),
        Param("device", "Device", "choice", default="auto", choices=("auto", "cpu", "cuda")),
    ),
    entry="lorashear.jobs.recover_job:run",
    requires=("lorashear.recover:recover",),
    resumable=True,
)
def _export_check(clean: dict[str, Any]) -> dict[str, str]:
    """Exactly one of units / plan, and the units must parse (ids and ranges are checked by ``compress``)."""
    from .export_job import parse_units

    if bool(clean.get("units")) == bool(clean.get("plan")):
        return {"units": "give the units (JSON) or a plan file, not both" if clean.get("units") else
                "select units (JSON group id -> unit indices) or give a plan file"}
    if clean.get("units"):
        try:
            parse_units(clean["units"])
        except ValueError as exc:
            return {"units": str(exc)}
    return {}


EXPORT = JobKind(
    name="export", label="Export",
    description="Remove a hand selection of units (or a saved plan's) from a model folder and save the smaller "
                "model with its sidecar (compress + save_pruned; both verify themselves). No training.",
    params=(
        Param("model", "Model directory", "dir", required=True, help="a Hugging Face model folder (or a pruned one)"),
        Param("units", "Units to remove (JSON)", "text",
              help='{"group id": [unit, ...]}, e.g. {"model.layers.0.self_attn:heads": [1]}; the Groups tab fills it'),
        Param("plan", "…or a plan file", "file", help="plan.json written by lorashear plan or the app's Save plan"),
        Param("verify", "Verify (masked vs compressed logits, and the reload)", "bool", default=True),
    ),
    entry="lorashear.jobs.export_job:run",
    requires=("lorashear.compress:compress", "lorashear.export:save_pruned"),
    extra={"check": _export_check},
)

BUILTIN: dict[str, JobKind] = {k.name: k for k in (GRAPH, ANALYZE, PRUNE, RECOVER, EVAL, EXPORT)}


def get(name: str, kinds: dict[str, JobKind] | None = None) -> JobKind:
    table = kinds if kinds is not None else BUILTIN
    if name not in table:
        raise LorashearError(f"unknown job kind {name!r} (known: {', '.join(table)})")
    return table[name]
