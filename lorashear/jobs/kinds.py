"""Job kinds: what each job needs as parameters, how those are checked, and which function runs it.

A kind is data, not code: the app builds its forms from ``JobKind.params`` and the worker imports
``JobKind.entry`` (``"module:function"``) in its own process, so the Dash process never runs the work. A kind
whose library call has not landed yet has ``entry=None`` and says why it is unavailable; it is listed so the
UI can show it disabled, never run with placeholder results.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LorashearError
from ..evaluate_settings import EvalSettings
from ..export_settings import ExportSettings
from ..knowledge.settings import AnalyzeSettings
from ..prune.settings import PruneSettings
from ..recover.settings import RecoverSettings
from ..settings import Option, Param, SettingsError, collect, convert, job_params, options

JobParamError = SettingsError  # invalid job parameters: ``errors`` maps each bad field to its message


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
    settings: type | None = None  # the capability's settings schema: its fields are job parameters too

    def make_settings(self, params: dict[str, Any]) -> Any:
        """The settings a job's (validated) parameters ask for — the job entry's one call."""
        names = options(self.settings)
        return self.settings(**{k: v for k, v in params.items() if k in names})

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
    """Convert and check one job input (a path, or a plain value); raise ValueError with a user-facing message."""
    if p.type not in ("path", "file", "dir"):
        return convert(p.name, Option(type=p.type, choices=p.choices, min=p.min, max=p.max), raw)
    text = raw.strip() if isinstance(raw, str) else raw
    if not isinstance(text, str):
        raise ValueError("must be text")
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


def preflight(clean: dict[str, Any]) -> dict[str, str]:
    """What a job would refuse in its first seconds, checked before it launches, with the CLI's messages
    (``loading.preflight``: model fields, data specs, sequence length; configs only, never weights)."""
    from ..loading import preflight as check  # lazy: the app's forms import kinds before any model is needed

    return check(clean)


def _blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


def validate(kind: JobKind, raw: dict[str, Any]) -> dict[str, Any]:
    """Return clean parameters or raise ``JobParamError`` naming every bad field.

    A kind with a settings schema checks those fields through it (the same conversion, ranges and cross-field
    rules as the CLI and the library; values left blank are not stored, so the run resolves their defaults);
    its other parameters are the job's inputs (model folders, files). Unknown keys are errors too: a typo in a
    scripted submission must not be silently ignored."""
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    schema = options(kind.settings) if kind.settings is not None else {}
    known = {p.name for p in kind.params} | set(schema)
    for key in raw:
        if key not in known:
            errors[key] = f"unknown parameter for {kind.name} jobs"
    for p in kind.params:
        if p.name in schema:
            continue
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
    if kind.settings is not None:
        given, bad = collect(kind.settings, {k: v for k, v in raw.items() if k in schema})
        clean.update({k: list(v) if isinstance(v, tuple) else v for k, v in given.items()})
        errors.update(bad)
        try:  # the cross-field rules (method options, schedule, γ needs a report, ...), on the fields that passed
            kind.settings(**given)
        except SettingsError as exc:
            errors.update({k: v for k, v in exc.errors.items() if k not in errors})
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

def settings_kind(name: str, label: str, description: str, settings: type, call: str, *inputs: Param,
                  exclude: tuple[str, ...] = (), resumable: bool = False) -> JobKind:
    """A job kind whose parameters are its ``inputs`` (model folders) and the fields of a settings schema; the
    worker runs ``lorashear.jobs.<name>_job:run``, which calls the library function ``call`` ("module:function")."""
    return JobKind(name=name, label=label, description=description,
                   params=(*inputs, *job_params(settings, exclude=exclude)), settings=settings,
                   entry=f"lorashear.jobs.{name}_job:run", requires=(call,), resumable=resumable)


MODEL = Param("model", "Model directory", "dir", required=True, help="a Hugging Face model folder (or a pruned one)")

EVAL = settings_kind(
    "eval", "Evaluate",
    "Perplexity per data source (short: 128-token windows; long: min(2048, context)) and cost (parameters, "
    "MACs/token, latency, throughput) of a model folder — dense, pruned or recovered.",
    EvalSettings, "lorashear.evaluate:evaluate_model", MODEL)
ANALYZE = settings_kind(
    "analyze", "Analyze",
    "Knowledge distribution: how much each unit, layer and group matters on calibration text (ablation: measured "
    "loss increase, slow; lora-taylor: LoRA-gradient estimate; taylor: LLM-Pruner's Taylor scores; magnitude: "
    "weight norms, no data).",
    AnalyzeSettings, "lorashear.knowledge.run:analyze_model", MODEL)
PRUNE = settings_kind(
    "prune", "Prune",
    "Structured pruning to a parameter ratio — by default LLM-Pruner's one-shot Taylor over MLP channels, then "
    "training distilled from the corrected teacher (every parameter up to 0.5 B, LoRA above); LHSPG (LoRAShear's own) or another "
    "baseline by method — then the smaller model (save_pruned), its plan and a run report with perplexity "
    "before/after.",
    PruneSettings, "lorashear.prune:prune", MODEL, resumable=True)
RECOVER = settings_kind(
    "recover", "Recover",
    "Dynamic knowledge recovery of a pruned model: LoRA rounds on a multi-source mixture whose weights follow each "
    "source's deviation from the dense model, then instruction tuning with early stopping.",
    RecoverSettings, "lorashear.recover:recover",
    Param("pruned", "Pruned model directory", "dir", required=True, help="written by a Prune job (its run/model)"),
    Param("dense", "Dense model directory", "dir", help="blank: the source the pruned model's sidecar names"),
    resumable=True)
EXPORT = settings_kind(
    "export", "Export",
    "Write a model as a Hugging Face folder or a GGUF file llama.cpp runs, after removing a hand selection of units "
    "or a saved plan's when one is given (compress + save_pruned; both verify themselves). No training.",
    ExportSettings, "lorashear.deploy:export", MODEL, exclude=("force",))

BUILTIN: dict[str, JobKind] = {k.name: k for k in (GRAPH, ANALYZE, PRUNE, RECOVER, EVAL, EXPORT)}


def get(name: str, kinds: dict[str, JobKind] | None = None) -> JobKind:
    table = kinds if kinds is not None else BUILTIN
    if name not in table:
        raise LorashearError(f"unknown job kind {name!r} (known: {', '.join(table)})")
    return table[name]
