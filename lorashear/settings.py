"""One schema per capability: the settings dataclass is the only place a request is spelled.

A capability's settings are a dataclass whose fields are declared with :func:`option`: type, default, range,
choices, help, and which pruning methods a field applies to. Everything else is generated from that one
declaration, so an option is added in one place:

* the CLI's arguments (:func:`add_arguments`, :func:`from_args`),
* the job kind's form parameters (:func:`job_params`) — the app's Jobs form is built from those,
* the conversion of form / job / CLI values (:func:`parse`: text → typed values, blank → default),
* the validation (:func:`check`), which runs once per value and raises :class:`SettingsError` whose ``errors``
  map each bad *field name* to its message, so a form highlights the field without parsing messages.

This module is torch-free: the CLI's ``--help`` and the app's start import it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .errors import LorashearError

#: value types an option may have; "list" is a tuple of strings (comma-separated on a form and in job params)
TYPES = ("int", "float", "bool", "choice", "text", "path", "file", "dir", "list")
DEVICES = ("auto", "cpu", "cuda")  # auto (= not given): cuda + bf16 when present, else cpu + fp32


class SettingsError(LorashearError):
    """Invalid settings; ``errors`` maps each bad field to its message. ``str()`` is one line naming the fields
    the way the caller spells them (``--lr`` on the CLI, ``lr`` elsewhere)."""

    def __init__(self, errors: Mapping[str, str], spell: Callable[[str], str] | None = None):
        self.errors = dict(errors)
        self.respelled = spell is not None  # already names the fields the caller's way (e.g. as CLI flags)
        self.spell = spell or (lambda name: name)
        super().__init__("; ".join(f"{self.spell(k)}: {v}" for k, v in self.errors.items()))

    @classmethod
    def one(cls, field: str, message: str) -> "SettingsError":
        """A refusal of one field's value found past the schema (by the planner, with the model in hand)."""
        return cls({field: message})

    def spelled(self, spell: Callable[[str], str]) -> "SettingsError":
        return SettingsError(self.errors, spell)


@dataclass(frozen=True)
class Param:
    """One form field of a job kind (the app builds its forms from these). ``type``: text | path | file | dir | int |
    float | bool | choice. Generated from a settings class by :func:`job_params`, or written out for a job's
    inputs (model folders, files) that are not settings."""

    name: str
    label: str
    type: str = "text"
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    help: str = ""
    methods: tuple[str, ...] = ()  # shown for these pruning methods only (empty: always)


@dataclass(frozen=True)
class Option:
    """What a settings field is. ``default`` lives on the dataclass field; ``None`` there means "not given"
    (resolved by the capability, e.g. from the method's defaults)."""

    help: str = ""
    label: str = ""
    type: str = "text"
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    open_min: bool = False  # min itself excluded
    open_max: bool = False
    methods: tuple[str, ...] = ()  # applies to these values of the class's SELECTOR field only (pruning methods,
    # knowledge estimators; empty: to all)
    method_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the default per method when unset
    required: bool = False  # the CLI and the form ask for it explicitly (the dataclass default serves the library)
    flag: str | None = None  # CLI spelling (default --field-name; "--no-x" for a switch that turns a default-on off)
    repeat: bool = False  # list on the CLI as a repeated flag (--data A --data B) rather than "A,B"
    cli: bool = True  # offered on the CLI
    form: bool = True  # offered on the job form
    metavar: str | None = None
    none_text: str = ""  # what "not given" means, for the help text (e.g. "the method's default")


def option(default: Any = None, help: str = "", **kw: Any) -> Any:
    """A dataclass field with its :class:`Option` (``field(default=..., metadata={"option": Option(...)})``)."""
    opt = Option(help=help, **kw)
    if opt.type not in TYPES:
        raise ValueError(f"unknown option type {opt.type!r}")
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default: use a tuple")
    return dataclasses.field(default=default, metadata={"option": opt})


def device_option() -> Any:
    """The ``device`` field every capability shares (auto = not given: cuda + bf16 when present, else cpu + fp32)."""
    return option(None, "auto, cpu or cuda", type="choice", choices=DEVICES, label="Device",
                  none_text="cuda + bf16 when present, else cpu + fp32")


def eval_options(help: str) -> tuple[Any, Any]:
    """The ``eval_tokens`` and ``eval_protocols`` fields of a run that evaluates before and after."""
    return (option(16384, help, type="int", min=256, label="Evaluation tokens per source"),
            option(("short", "long"), "perplexity protocols", type="list", choices=("short", "long"), cli=False,
                   form=False))


TEACHERS = ("finetuned", "dense")  # or a model folder / any source the loader takes


LR_SCHEDULES = ("constant", "cosine")  # lorashear.runs.scheduled_lr


def lr_schedule_option(what: str) -> Any:
    """The ``lr_schedule`` field of a run that trains (prune, recover); ``what``: which steps a cosine decays."""
    return option("constant", f"constant: --lr at every step; cosine: {what}", type="choice", choices=LR_SCHEDULES,
                  label="Learning-rate schedule")


def distill_options(distill_default: float | None = 0.0, none_text: str = "") -> tuple[Any, Any, Any, Any, Any]:
    """The ``distill``, ``teacher``, ``pure_kd``, ``kd_temperature`` and ``kd_top_k`` fields of a run that trains
    (prune, recover): one spelling of distillation for both (``lorashear.distill`` is the loss and the teacher).
    ``distill_default``: the weight when not given; ``None`` leaves it to the capability to resolve (it must, before
    :func:`distill_errors`), and ``none_text`` says how, for the help text and the form."""
    return (option(distill_default, "weight of the distillation term (KL from the teacher's logits to the model's); "
                   "0: none", type="float", min=0.0, label="Distillation weight", none_text=none_text),
            option(None, "distillation teacher: finetuned (the dense model after the same LoRA budget on this run's "
                   "data, cached on disk), dense, or a model folder", label="Teacher", metavar="finetuned|dense|DIR",
                   none_text="finetuned when --distill > 0"),
            option(False, "train on the distillation term alone (drop the next-token loss; needs --distill > 0)",
                   type="bool", flag="--pure-kd", form=False),
            option(1.0, "distillation temperature T (KL of softmax(logits / T), times T²)", type="float", min=0.0,
                   open_min=True, form=False),
            option(None, "KL over the teacher's top K logits only (renormalised): bounds the teacher's memory",
                   type="int", min=1, form=False, none_text="the whole vocabulary"))


def distill_errors(st: Any) -> dict[str, str]:
    """Cross-field rules of :func:`distill_options`; resolves ``teacher`` (finetuned when distilling), in place."""
    errors: dict[str, str] = {}
    if st.distill == 0:
        if st.teacher is not None:
            errors["teacher"] = "a teacher is used only when distilling: give --distill > 0"
        if st.pure_kd:
            errors["pure_kd"] = "pure distillation needs --distill > 0"
    elif st.teacher is None:
        object.__setattr__(st, "teacher", "finetuned")
    elif not st.teacher.strip():
        errors["teacher"] = f"choose {', '.join(TEACHERS)} or a model folder"
    return errors


def options(cls_or_obj: Any) -> dict[str, tuple[Option, Any]]:
    """``{field name: (Option, dataclass default)}`` in declaration order (fields without an Option are skipped)."""
    out = {}
    for f in dataclasses.fields(cls_or_obj):
        opt = f.metadata.get("option")
        if opt is not None:
            out[f.name] = (opt, f.default)
    return out


def flag(name: str, opt: Option) -> str:
    return opt.flag or "--" + name.replace("_", "-")


# --------------------------------------------------------------------------------------- one value
def convert(name: str, opt: Option, raw: Any) -> Any:
    """Text or typed value → typed value, range and choices checked; ``ValueError`` with a user-facing message."""
    if raw is None:
        return None
    if opt.type == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (list, tuple)):  # a Dash checklist gives a list
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        raise ValueError("must be true or false")
    if opt.type == "list":
        items = raw.split(",") if isinstance(raw, str) else list(raw) if isinstance(raw, (list, tuple)) else None
        if items is None or not all(isinstance(i, str) for i in items):
            raise ValueError("must be a comma-separated list")
        items = tuple(i.strip() for i in items if i.strip())
        if opt.choices:
            bad = [i for i in items if i not in opt.choices]
            if bad:
                raise ValueError(f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(opt.choices)}")
        return items
    if opt.type in ("int", "float"):
        if isinstance(raw, bool):
            raise ValueError("must be a number")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if opt.type == "int":
            if value != int(value):
                raise ValueError("must be a whole number")
            value = int(value)
        lo, hi = opt.min, opt.max
        bad_lo = lo is not None and (value <= lo if opt.open_min else value < lo)
        bad_hi = hi is not None and (value >= hi if opt.open_max else value > hi)
        if bad_lo or bad_hi:
            got = _num(value)
            if lo is not None and hi is not None:
                raise ValueError(f"must be in {'(' if opt.open_min else '['}{_num(lo)}, {_num(hi)}"
                                 f"{')' if opt.open_max else ']'}, got {got}")
            if lo is not None:
                raise ValueError(f"must be {'>' if opt.open_min else '≥'} {_num(lo)}, got {got}")
            raise ValueError(f"must be {'<' if opt.open_max else '≤'} {_num(hi)}, got {got}")
        return value
    if not isinstance(raw, str):
        raise ValueError("must be text")
    text = raw.strip()
    if opt.type == "choice" and text not in opt.choices:
        raise ValueError(f"unknown {text!r}; choose one of {', '.join(opt.choices)}")
    return text


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() and 1000 <= abs(v) < 1e15 else f"{v:g}"


# ------------------------------------------------------------------------------------ whole settings
def check(obj: Any, cross: Callable[[Any], Mapping[str, str]] | None = None) -> None:
    """Convert and check every field of a settings object in place (from ``__post_init__``), then the
    cross-field rules ``cross(obj) -> {field: message}``; raise one :class:`SettingsError` naming every bad field."""
    errors: dict[str, str] = {}
    selector = getattr(type(obj), "SELECTOR", "method")  # the field whose value ``Option.methods`` names
    method = getattr(obj, selector, None)
    for name, (opt, _) in options(obj).items():
        raw = getattr(obj, name)
        if raw is None:
            continue
        try:
            object.__setattr__(obj, name, convert(name, opt, raw))
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        if opt.methods and method is not None and method not in opt.methods:
            errors[name] = f"does not apply to {selector} {method} (it applies to: {', '.join(opt.methods)})"
    if cross is not None:  # every field's problem at once, not the cross-field ones only after the rest are fixed
        try:
            found = cross(obj)
        except (TypeError, ValueError, AttributeError):  # a rule that needs a field that is itself wrong
            found = {}
        errors.update({k: v for k, v in found.items() if v and k not in errors})
    if errors:
        raise SettingsError(errors)


def fill_method_defaults(obj: Any) -> None:
    """Fields left ``None`` take their method's default (``Option.method_defaults``), in place."""
    method = getattr(obj, "method", None)
    for name, (opt, _) in options(obj).items():
        if getattr(obj, name) is None and method in opt.method_defaults:
            object.__setattr__(obj, name, opt.method_defaults[method])


def collect(cls: type, raw: Mapping[str, Any], *, only: Iterable[str] | None = None,
            unknown: str = "error") -> tuple[dict[str, Any], dict[str, str]]:
    """(typed values of the fields that passed, {field: message} of those that did not) — what a form / job / CLI
    gives (text or typed; blank = not given, so the default applies). ``only``: the fields the caller offers;
    ``unknown``: "error" (a typo in a scripted submission must not be silently ignored) or "ignore"."""
    opts = options(cls)
    allowed = set(opts) if only is None else set(only)
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            if unknown == "error":
                errors[key] = "unknown setting"
            continue
        opt, _ = opts[key]
        if value is None or (isinstance(value, str) and not value.strip() and opt.type != "bool"):
            if opt.required:
                errors[key] = "required"
            continue
        try:
            values[key] = convert(key, opt, value)
        except ValueError as exc:
            errors[key] = str(exc)
    for key in allowed:
        if opts[key][0].required and key not in raw:
            errors.setdefault(key, "required")
    return values, errors


def given_values(cls: type, raw: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    """:func:`collect`'s values; raises :class:`SettingsError` naming every bad field."""
    values, errors = collect(cls, raw, **kw)
    if errors:
        raise SettingsError(errors)
    return values


def parse(cls: type, raw: Mapping[str, Any], *, only: Iterable[str] | None = None, unknown: str = "error") -> Any:
    """Form / job / CLI values → a checked ``cls`` instance (:func:`given_values`, then the class's own checks)."""
    return cls(**given_values(cls, raw, only=only, unknown=unknown))


def to_params(obj: Any) -> dict[str, Any]:
    """JSON-able values (tuples as lists) — what run.json and the job registry store."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                  groups: Mapping[str, str] | None = None) -> None:
    """One argparse argument per option. Every default is ``None`` ("not given"): the dataclass resolves
    defaults, so the CLI cannot drift from the library. ``groups``: {method: title} puts method-specific
    options under a heading."""
    excluded = set(exclude)
    heads: dict[tuple[str, ...], Any] = {}
    for name, (opt, default) in options(cls).items():
        if name in excluded or not opt.cli:
            continue
        target = parser
        if opt.methods and groups is not None:
            title = groups.get(opt.methods[0], ", ".join(opt.methods) + " options")
            target = heads.setdefault((title,), parser.add_argument_group(title))
        text = opt.help
        shown = default if default is not None else None
        if opt.type != "bool":
            if opt.none_text and default is None:
                text += f" (default: {opt.none_text})"
            elif shown is not None and shown != () and not opt.required:
                text += f" (default: {','.join(shown) if isinstance(shown, tuple) else shown})"
        if opt.methods:
            text += f" [{', '.join(opt.methods)}]"
        text = text.replace("%", "%%")
        f = flag(name, opt)
        if opt.type == "bool":
            value = not f.startswith("--no-")
            target.add_argument(f, dest=name, action="store_const", const=value, default=None, help=text)
        elif opt.repeat:
            target.add_argument(f, dest=name, action="append", default=None, metavar=opt.metavar or "SPEC",
                                help=text + " (repeatable)")
        else:
            target.add_argument(f, dest=name, default=None, metavar=opt.metavar or _metavar(opt), help=text,
                                required=opt.required)


def _metavar(opt: Option) -> str:
    if opt.type == "choice":
        return "{" + ",".join(opt.choices) + "}"
    if opt.type == "list":
        return ",".join(opt.choices[:2]) + ",..." if opt.choices else "A,B,..."
    return {"int": "N", "float": "X"}.get(opt.type, "TEXT")


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The settings an argparse namespace (built by :func:`add_arguments`) asks for; errors name the flags."""
    opts = options(cls)
    raw = {name: getattr(args, name) for name in opts if getattr(args, name, None) is not None}
    raw.update(extra)
    try:
        return parse(cls, raw)
    except SettingsError as exc:
        raise exc.spelled(lambda n: flag(n, opts[n][0]) if n in opts else n) from None


# ---------------------------------------------------------------------------------------- job forms
def job_params(cls: type, *, exclude: Iterable[str] = (), labels: Mapping[str, str] | None = None) -> tuple:
    """The job kind's form fields (``jobs.kinds.Param``) for a settings class, in declaration order."""
    excluded = set(exclude)
    out = []
    for name, (opt, default) in options(cls).items():
        if name in excluded or not opt.form:
            continue
        ptype = "text" if opt.type == "list" else opt.type
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = opt.help + (f" (blank: {opt.none_text})" if opt.none_text and default is None else "")
        if opt.methods:
            text += f" — {', '.join(opt.methods)} only"
        out.append(Param(name, (labels or {}).get(name) or opt.label or name.replace("_", " ").capitalize(), ptype,
                         default=shown, required=opt.required, choices=opt.choices if opt.type == "choice" else (),
                         min=opt.min, max=opt.max, help=text, methods=opt.methods))
    return tuple(out)
