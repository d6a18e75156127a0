"""The knowledge report: one row per unit, roll-ups per group / layer / kind, and where the numbers came from.

A report is a file the app and LHSPG read later, possibly on another machine, so it carries the identity
of the model it describes (class, path, a hash of the config and one of the parameter names and shapes)
and refuses to be applied to a different model. Format: Parquet (the unit table, with the metadata and
block measurements as JSON in the file's key-value metadata) or JSON (the same content as plain lists).
The schema is documented in ``docs/knowledge.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from .estimators import MAGNITUDE_SCORE, OVERLAP_KINDS, Scores
from ..adapters import is_lora_param
from .slices import logical_name

FORMAT = "lorashear.knowledge/2"
# Version 1 differs in one thing: a magnitude report's score was the norm ‖x_u‖, which does not add up over
# parameters (every reader squared it again). Version 2 stores ‖x_u‖²; a version-1 file is squared on load.
FORMAT_V1 = "lorashear.knowledge/1"
READABLE = (FORMAT_V1, FORMAT)
UNIT_COLUMNS = ["group", "kind", "layer", "unit", "params", "score", "density", "block", "block_size", "unprunable"]
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "_commit_hash",
                    "_attn_implementation_autoset", "_attn_implementation", "output_attentions", "output_hidden_states"}
_META_KEY = b"lorashear.knowledge"


# ------------------------------------------------------------------------------------------ identity
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    get_base = getattr(model, "get_base_model", None)
    if get_base is not None:
        cfg = getattr(get_base(), "config", cfg)
    return cfg


def model_identity(model: nn.Module, source: str | None = None) -> dict:
    """Class, path, parameter count and two hashes that pin a report to a model: the config (minus
    fields that do not change the network, such as dtype or ``use_cache``) and the base parameters' names
    and shapes (LoRA adapters excluded, PEFT prefixes removed: a PEFT-wrapped model matches its base)."""
    cfg = _base_config(model)
    cfg_dict = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else {}
    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in _VOLATILE_CONFIG}
    shapes = sorted((logical_name(n), list(p.shape)) for n, p in model.named_parameters() if not is_lora_param(n))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "class": type(base).__name__,
        "source": str(source) if source is not None else (getattr(cfg, "_name_or_path", "") or None),
        "config_hash": _sha(cfg_dict),
        "shapes_hash": _sha(shapes),
        "n_params": int(sum(p.numel() for n, p in model.named_parameters() if not is_lora_param(n))),
    }


def graph_identity(opgraph: Any) -> dict:
    """``model_identity`` of the model an ``OpGraph`` was traced from, computed from the graph alone (its config
    and parameter shapes; tied aliases counted under the name ``named_parameters`` keeps) — so a viewer that
    only holds the graph can tell which knowledge reports describe it."""
    cfg = {k: v for k, v in (opgraph.config or {}).items() if k not in _VOLATILE_CONFIG}
    names = list(opgraph.params)
    ties: dict[str, list[str]] = {}
    for n, p in opgraph.params.items():
        ties.setdefault(p.get("tied_to", n), []).append(n)
    keep = [min(v, key=names.index) for v in ties.values()]
    keep = [n for n in keep if not is_lora_param(n)]
    shapes = sorted((logical_name(n), list(opgraph.params[n]["shape"])) for n in keep)
    return {"class": str(opgraph.model_class).split("(")[-1].rstrip(")"), "config_hash": _sha(cfg),
            "shapes_hash": _sha(shapes), "n_params": int(sum(int(opgraph.params[n]["numel"]) for n in keep))}


def same_model(a: dict | None, b: dict | None) -> bool:
    """Whether two identities (``model_identity`` / ``graph_identity`` / a report's ``meta["model"]``) describe
    the same network: equal config and parameter-shape hashes (paths may differ)."""
    if not a or not b:
        return False
    return (a.get("config_hash"), a.get("shapes_hash")) == (b.get("config_hash"), b.get("shapes_hash")) \
        and a.get("shapes_hash") is not None


# --------------------------------------------------------------------------------------------- report
@dataclass
class KnowledgeReport:
    """``units``: one row per unit of every scored group (columns ``UNIT_COLUMNS``); ``blocks``: every
    block measurement (ablation only); ``meta``: format, model identity, data, estimator, settings, notes,
    timing and the unprunable selection rule.

    Units of ``OVERLAP_KINDS`` (GQA query heads) share weights with the kv-head units of their layer, so the
    roll-ups keep them apart: totals, shares and densities are over the other ("roll-up") units only, and
    query heads appear in their own labelled column (``by_layer``) or rows flagged ``rollup=False``."""

    units: pd.DataFrame
    meta: dict
    blocks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["group", "level", "block", "first_unit", "n_units", "loss", "delta"]))

    # --- roll-ups (sums of unit scores; density = score per parameter)
    def rollup_mask(self) -> pd.Series:
        """True for the units the roll-ups add up (every kind but ``OVERLAP_KINDS``)."""
        return ~self.units["kind"].isin(OVERLAP_KINDS)

    def rollup_units(self) -> pd.DataFrame:
        """The units that partition the model's prunable weights (query heads left out: no double count)."""
        return self.units[self.rollup_mask()]

    def overlap_units(self) -> pd.DataFrame:
        """The units that overlap others (GQA query heads): drawn and listed, never added to the totals."""
        return self.units[~self.rollup_mask()]

    def by_group(self) -> pd.DataFrame:
        """One row per group. ``share`` is the group's part of the roll-up total; overlapping groups (query
        heads, ``rollup`` False) have no share — their units are already counted in the kv-head groups."""
        u = self.units
        out = u.groupby("group", sort=False).agg(kind=("kind", "first"), layer=("layer", "first"), units=("unit", "size"),
                                                  params=("params", "sum"), score=("score", "sum"),
                                                  mean=("score", "mean"), max=("score", "max"),
                                                  unprunable=("unprunable", "sum")).reset_index()
        out["density"] = out["score"] / out["params"]
        out["rollup"] = ~out["kind"].isin(OVERLAP_KINDS)
        out["share"] = (out["score"] / self.rollup_units()["score"].sum()).where(out["rollup"])
        return out

    def by_layer(self) -> pd.DataFrame:
        """Per layer: total score and its split by kind; groups that span the network (hidden) are left out.
        ``units``, ``params``, ``score``, ``density``, ``share`` and ``unprunable`` count roll-up units only;
        overlapping kinds (``query_heads``) get their own column, outside the total."""
        u = self.rollup_units()
        u = u[u["layer"].notna()]
        if u.empty:
            return pd.DataFrame(columns=["layer", "units", "params", "score", "density", "share", "unprunable"])
        piv = u.pivot_table(index="layer", columns="kind", values="score", aggfunc="sum", fill_value=0.0)
        out = pd.DataFrame({"layer": piv.index.astype(int)})
        for k in piv.columns:
            out[k] = piv[k].to_numpy()
        ov = self.overlap_units()
        ov = ov[ov["layer"].notna()]
        for k, rows in ov.groupby("kind", sort=False):
            per = rows.groupby("layer")["score"].sum()
            out[str(k)] = [float(per.get(l, np.nan)) for l in piv.index]
        agg = u.groupby("layer").agg(units=("unit", "size"), params=("params", "sum"), score=("score", "sum"),
                                     unprunable=("unprunable", "sum"))
        out["units"] = agg["units"].to_numpy()
        out["params"] = agg["params"].to_numpy()
        out["score"] = agg["score"].to_numpy()
        out["density"] = out["score"] / out["params"]
        out["share"] = out["score"] / out["score"].sum()
        out["unprunable"] = agg["unprunable"].to_numpy()
        return out.reset_index(drop=True)

    def by_kind(self) -> pd.DataFrame:
        """One row per kind; ``rollup`` False marks kinds whose units overlap others (not to be added up)."""
        u = self.units
        out = u.groupby("kind", sort=False).agg(groups=("group", "nunique"), units=("unit", "size"), params=("params", "sum"),
                                                score=("score", "sum"), unprunable=("unprunable", "sum")).reset_index()
        out["density"] = out["score"] / out["params"]
        out["rollup"] = ~out["kind"].isin(OVERLAP_KINDS)
        return out

    def scores(self, group: str) -> np.ndarray:
        """Unit scores of one group, in unit order."""
        rows = self.units[self.units["group"] == group].sort_values("unit")
        if rows.empty:
            raise LorashearError(f"group '{group}' is not in this report")
        return rows["score"].to_numpy()

    def unprunable_units(self) -> dict[str, list[int]]:
        """group id -> units marked unprunable (what LHSPG must keep)."""
        u = self.units[self.units["unprunable"]]
        return {g: sorted(int(x) for x in rows["unit"]) for g, rows in u.groupby("group", sort=False)}

    @property
    def estimator(self) -> str:
        return self.meta.get("estimator", "")

    def save(self, path: str | Path) -> Path:
        return save_report(self, path)


def build_report(scores: Scores, groups: list[Group], meta: dict) -> KnowledgeReport:
    """Assemble the unit table from an estimator's ``Scores`` (only groups it scored, in group order)."""
    rows: dict[str, list] = {c: [] for c in UNIT_COLUMNS}
    for g in groups:
        if g.id not in scores.units:
            continue
        s = np.asarray(scores.units[g.id], dtype=np.float64)
        if s.shape != (g.n_units,):
            raise LorashearError(f"estimator gave {s.shape} scores for group '{g.id}' of {g.n_units} units")
        bof = scores.block_of.get(g.id)
        bof = np.asarray(bof) if bof is not None else np.arange(g.n_units)
        size = np.bincount(bof)[bof]
        rows["group"] += [g.id] * g.n_units
        rows["kind"] += [g.kind] * g.n_units
        rows["layer"] += [g.layer] * g.n_units
        rows["unit"] += list(range(g.n_units))
        rows["params"] += [g.params_per_unit] * g.n_units
        rows["score"] += s.tolist()
        rows["density"] += (s / max(g.params_per_unit, 1)).tolist()
        rows["block"] += bof.tolist()
        rows["block_size"] += size.tolist()
        rows["unprunable"] += [False] * g.n_units
    units = _typed(pd.DataFrame(rows))
    blocks = pd.DataFrame(scores.blocks, columns=["group", "level", "block", "first_unit", "n_units", "loss", "delta"])
    return KnowledgeReport(units, meta, blocks)


def _typed(units: pd.DataFrame) -> pd.DataFrame:
    return units.astype({"group": "string", "kind": "string", "layer": "Int64", "unit": "int64", "params": "int64",
                         "score": "float64", "density": "float64", "block": "int64", "block_size": "int64",
                         "unprunable": "bool"})


# ----------------------------------------------------------------------------------------------- files
def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_path(path: str | Path) -> Path:
    """``.json`` means JSON; anything else is Parquet (``.parquet`` added when there is no suffix)."""
    path = Path(path)
    return path if path.suffix else path.with_suffix(".parquet")


def save_report(report: KnowledgeReport, path: str | Path) -> Path:
    """Write the report atomically (temp file, then rename) as Parquet or JSON, by suffix."""
    path = report_path(path)
    meta = dict(report.meta, format=FORMAT)
    blocks = report.blocks.to_dict(orient="records")
    if path.suffix.lower() == ".json":
        units = {c: [None if (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v for v in report.units[c].tolist()]
                 for c in UNIT_COLUMNS}
        doc = {"format": FORMAT, "meta": meta, "units": units, "blocks": blocks}

        def write(tmp):
            with open(tmp, "w") as fh:
                json.dump(doc, fh, default=_json_default)
        return _atomic(path, write)

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(report.units[UNIT_COLUMNS], preserve_index=False)
    extra = json.dumps({"meta": meta, "blocks": blocks}, default=_json_default).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: extra})
    return _atomic(path, lambda tmp: pq.write_table(table, tmp))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_report(path: str | Path, model: nn.Module | None = None) -> KnowledgeReport:
    """Read a report written by ``save_report``; with ``model``, also check that it describes that model.

    A version-1 file (``lorashear.knowledge/1``) is read as version 2: a magnitude report's scores, stored then as
    the norm ``‖x_u‖``, are squared (and the densities recomputed) so that every report's scores add up over
    parameters; its stored unprunable column is kept as it was selected."""
    path = Path(path)
    if not path.is_file():
        raise LorashearError(f"{path}: no such knowledge report")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LorashearError(f"{path}: not a knowledge report (malformed JSON: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") not in READABLE:
            raise LorashearError(f"{path}: not a knowledge report (format is not {FORMAT})")
        units = pd.DataFrame(doc["units"])
        meta, blocks = dict(doc["meta"], format=doc["format"]), doc.get("blocks", [])
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise LorashearError(f"{path}: not a knowledge report (cannot read Parquet: {exc})") from None
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise LorashearError(f"{path}: a Parquet file, but not a knowledge report (no '{_META_KEY.decode()}' metadata)")
        extra = json.loads(raw)
        meta, blocks = extra["meta"], extra.get("blocks", [])
        if meta.get("format") not in READABLE:
            raise LorashearError(f"{path}: knowledge report format {meta.get('format')!r}; this version reads "
                                 f"{' and '.join(READABLE)}")
        units = table.to_pandas()
    missing = [c for c in UNIT_COLUMNS if c not in units.columns]
    if missing:
        raise LorashearError(f"{path}: knowledge report lacks column(s) {missing}")
    units = _typed(units[UNIT_COLUMNS])
    if meta.get("format") == FORMAT_V1 and meta.get("estimator") == "magnitude":
        units["score"] = units["score"] ** 2  # ‖x_u‖ → ‖x_u‖²: the additive score version 2 stores
        units["density"] = units["score"] / units["params"].clip(lower=1)
    report = KnowledgeReport(units, _current_meta(meta),
                             pd.DataFrame(blocks, columns=["group", "level", "block", "first_unit", "n_units", "loss", "delta"]))
    if model is not None:
        check_model(report, model)
    return report


def read_meta(path: str | Path) -> dict:
    """A report's ``meta`` (model identity, estimator, …) without reading its unit table: listing the reports
    that describe one model must not load every report."""
    path = Path(path)
    if not path.is_file():
        raise LorashearError(f"{path}: no such knowledge report")
    if path.suffix.lower() == ".json":
        return load_report(path).meta
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise LorashearError(f"{path}: not a knowledge report (cannot read Parquet: {exc})") from None
    if raw is None:
        raise LorashearError(f"{path}: a Parquet file, but not a knowledge report (no '{_META_KEY.decode()}' metadata)")
    return _current_meta(json.loads(raw)["meta"])


def _current_meta(meta: dict) -> dict:
    """A version-1 report's meta as version 2 writes it (``load_report`` squares a magnitude report's scores);
    ``upgraded_from`` records that the file itself is older."""
    if meta.get("format") != FORMAT_V1:
        return meta
    meta = dict(meta, format=FORMAT, upgraded_from=FORMAT_V1)
    if meta.get("estimator") == "magnitude":
        meta["settings"] = dict(meta.get("settings") or {}, squared=True)
        meta["notes"] = dict(meta.get("notes") or {}, score=MAGNITUDE_SCORE)
    return meta


def check_model(report: KnowledgeReport, model: nn.Module) -> None:
    """Raise ``LorashearError`` unless the report was made for a model with this config and these weights' shapes."""
    mine = report.meta.get("model", {})
    other = model_identity(model)
    if not same_model(mine, other):
        what = "parameter shapes" if mine.get("shapes_hash") != other["shapes_hash"] else "config"
        raise LorashearError(
            f"knowledge report is for another model: it describes {mine.get('class')} from {mine.get('source')!r} "
            f"({mine.get('n_params') or 0:,} parameters), this is {other['class']} ({other['n_params']:,} parameters); "
            f"the {what} differ")


# --------------------------------------------------------------------------------------------- summary
def summary_table(report: KnowledgeReport) -> str:
    """A plain-text per-layer summary (what the CLI prints and job logs keep)."""
    layers = report.by_layer()
    overlap = [k for k in OVERLAP_KINDS if k in layers.columns]
    kinds = [k for k in ("attention", "mlp") if k in layers.columns] + sorted(
        c for c in layers.columns if c not in ("attention", "mlp", "layer", "units", "params", "score", "density", "share",
                                               "unprunable", *overlap))
    total_all = report.rollup_units()["score"].sum()
    head = ["layer"] + kinds + ["total", "share", "unprunable"] + [f"({k})" for k in overlap]
    rows = [[str(int(r["layer"]))] + [f"{r[k]:.4g}" for k in kinds] + [f"{r['score']:.4g}", f"{r['score'] / total_all:.1%}" if total_all else "-",
                                                                         f"{int(r['unprunable'])}/{int(r['units'])}"]
            + [f"{r[k]:.4g}" for k in overlap]
            for _, r in layers.iterrows()]
    for _, g in report.by_group().iterrows():
        if pd.isna(g["layer"]):
            rows.append([g["group"]] + ["" for _ in kinds] + [f"{g['score']:.4g}", f"{g['score'] / total_all:.1%}" if total_all else "-",
                                                              f"{int(g['unprunable'])}/{int(g['units'])}"] + ["" for _ in overlap])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + rows]
    m = report.meta
    model, data, notes = m.get("model") or {}, m.get("data") or {}, m.get("notes") or {}
    desc = f"{m.get('estimator')} on {model.get('class')} ({model.get('n_params') or 0:,} parameters)"
    if data:
        desc += f", {data.get('n_samples')}×{data.get('seq_len')} calibration tokens"
    if notes.get("base_loss") is not None:
        desc += f", calibration loss {notes['base_loss']:.4f}"
    desc += f"; {len(report.units):,} units in {report.units['group'].nunique()} groups; {m.get('seconds', 0):.1f} s"
    lines += ["", desc]
    if overlap:
        lines.append(f"({', '.join(overlap)}): GQA query heads, scored apart; they share weights with the attention "
                     f"units, so they are not in total, share or unprunable")
    for kind, why in (notes.get("unscored_kinds") or {}).items():
        lines.append(f"{kind} not scored by {m.get('estimator')}: {why}")
    if notes.get("uncovered"):
        lines.append(f"not scored (no LoRA adapter): {', '.join(notes['uncovered'])}")
    if m.get("selection"):
        lines.append(f"unprunable: {m['selection']['rule']}")
        if m["selection"].get("overlap"):
            ov = m["selection"]["overlap"]
            lines.append(f"unprunable query heads ({ov['unprunable_units']} of {ov['units']}): {ov['rule']}")
    return "\n".join(lines)
