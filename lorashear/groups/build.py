"""Assembly: turn the two passes' results into ``Group``s — members and roles, kind, the verdict with its
reasons, parameters per unit, and stable ids.

Every leaf class of the axis algebra that touches a parameter becomes a group. Its verdict collects the
class's reasons from pass 1 (opaque ops, fixed-size buffers, selected indices, inferred splits), pass 2's
violations, and the checks here (a kind compress cannot rebuild, no producer to zero). GQA query-head
classes get the consumer-side proof (``_query_head_proof``).
"""
from __future__ import annotations

import re

from ..axes import unit_layout
from ..trace import OpGraph
from .group import KIND_SUFFIX, Group, Member
from .propagate import AxisPropagation
from .zeroflow import MAX_VIOLATIONS, ZeroFlow

_LORA_RE = re.compile(r"\.lora_(A|B|embedding_A|embedding_B)(\.[^.]+)?(?=\.)")


def _logical_module(param: str) -> str:
    path = param.rsplit(".", 1)[0] if "." in param else ""
    path = path.replace(".base_layer", "")
    path = _LORA_RE.sub("", path + ".").rstrip(".")
    path = re.sub(r"\.lora_(A|B|embedding_A|embedding_B)(\.[^.]+)?$", "", path)
    if path.startswith("base_model.model."):
        path = path[len("base_model.model.") :]
    return path


def _is_lora(param: str) -> bool:
    return bool(re.search(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\b", param))


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    split = [p.split(".") for p in paths]
    out = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    return ".".join(out)


def _layer_of(path: str) -> int | None:
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return None


def find_groups(og: OpGraph) -> list[Group]:
    """Discover every parameter-carrying axis class of the graph, as a ``Group`` with members and a verdict."""
    prop = AxisPropagation(og)
    prop.run()
    flow = ZeroFlow(prop)
    flow.run()
    alg = prop.alg

    members: dict[int, list[tuple[str, int]]] = {}
    for p, exprs in prop.pexpr.items():
        for ax, e in enumerate(exprs):
            for leaf in alg.expand(e):
                k = alg.find(leaf)
                if (p, ax) not in members.setdefault(k, []):
                    members[k].append((p, ax))
    kinds_seen: dict[int, set[str]] = {}
    for kind, e in prop.attention_axes:
        for k in flow.axis_classes(e):
            kinds_seen.setdefault(k, set()).add(kind)
    split_reasons: dict[int, list[str]] = {}
    for inferred, fixed, why in prop.inferred_splits:
        if any("attention" in kinds_seen.get(k, ()) for k in flow.axis_classes(fixed)):
            for k in flow.axis_classes(inferred):
                split_reasons.setdefault(k, []).append(f"{why} (the attention heads axis straddles the split)")
    hidden = set().union(*(flow.axis_classes(e) for e in prop.embed_out)) if prop.embed_out else set()
    output = set().union(*(flow.axis_classes(e) for e in prop.output_axes)) if prop.output_axes else set()
    broadcast = {alg.find(leaf) for a in prop.broadcast_atoms for leaf in alg.leaves(a)}

    node_index: dict[int, list[str]] = {}
    for name, v in prop.vals.items():
        if prop.g.nodes[name].get("kind") != "op":
            continue
        for k in flow.classes(v):
            node_index.setdefault(k, []).append(name)

    groups: list[Group] = []
    for k, mems in members.items():
        n_units = alg.size[k]
        if n_units <= 1:
            continue
        mlist: list[Member] = []
        for p, ax in sorted(mems):
            lay = unit_layout(alg, prop.pexpr[p][ax], k)
            roles = prop.roles.get((p, ax), set())
            role = next((r for r in ("index", "producer", "consumer", "passthrough") if r in roles), "passthrough")
            mlist.append(Member(p, ax, role, lay[0], lay[1]))
        params = [m.param for m in mlist]
        producers = [m for m in mlist if m.role == "producer"]
        seen = kinds_seen.get(k, set())
        reasons = list(alg.class_reasons(k)) + flow.violations.get(k, []) + split_reasons.get(k, [])
        if "attention" in seen and k in broadcast and not all(_is_lora(p) for p in params):
            reasons = _query_head_proof(k, mlist, reasons, flow)
        if all(_is_lora(p) for p in params):
            kind = "lora_rank"
            reasons.insert(0, "LoRA rank axis: adapter-internal, never pruned")
        elif (any(m.role == "index" for m in mlist) or k in output) and k not in hidden:
            kind = "vocab"
        elif "attention" in seen:
            kind = "query_heads" if k in broadcast else "attention"  # GQA: the i-th query head of every kv group
        elif "head_dim" in seen:
            kind = "head_dim"
            reasons.append("per-head dimension: the attention module reshapes q/k/v with one fixed head_dim")
        elif k in hidden:
            kind = "hidden"
        else:
            mods = {_layer_of(_logical_module(p)) for p in params}
            consumers = [m for m in mlist if m.role == "consumer"]
            whole_axis = all(len(m.layout) == 1 for m in mlist)  # a factor of a reshaped axis is no channel
            kind = "mlp" if len(mods) == 1 and None not in mods and producers and consumers and whole_axis else "other"
        if kind == "other":
            reasons.append("not a structure compress can rebuild (attention heads, MLP channels, hidden dimension)")
        if not producers:
            reasons.append("no parameter produces it: nothing to zero")
        module = _common_prefix([_logical_module(m.param) for m in mlist])
        per_unit = 0
        by_param: dict[str, list[Member]] = {}
        for m in mlist:
            by_param.setdefault(m.param, []).append(m)
        for p, ms in by_param.items():
            if "tied_to" in og.params[p]:
                continue  # the same tensor is counted under its first name
            shape = og.params[p]["shape"]
            keep = 1
            for ax, s in enumerate(shape):
                cut = sum(s // n_units for m in ms if m.axis == ax)
                keep *= s - cut
            per_unit += og.params[p]["numel"] - keep
        groups.append(Group(
            id="", kind=kind, module=module, layer=_layer_of(module), n_units=n_units, params_per_unit=per_unit,
            members=mlist, nodes=node_index.get(k, []), prunable=not reasons,
            reason="; ".join(dict.fromkeys(reasons)) or None, compensation=flow.compensation.get(k, []) if not reasons else []))
    _assign_ids(groups)
    order = {"hidden": 0, "attention": 1, "mlp": 2}
    groups.sort(key=lambda g: (g.layer if g.layer is not None else -1, order.get(g.kind, 3), g.id))
    return groups


_BROADCAST_REASONS = ("broadcast copies by ", "query heads share a kv head inside sdpa")


def _query_head_proof(k: int, mlist: list[Member], reasons: list[str], flow: ZeroFlow) -> list[str]:
    """The i-th query head of every kv group (GQA): a valid structure (``repeat_kv`` only needs the same number
    of query heads per kv group), but zeroing its q rows does not zero its output (uniform attention over the
    shared values). Its zero set is on the consumer side: the columns of every linear that contracts it
    (``o_proj`` and its LoRA A). With those columns zero, the unit contributes nothing wherever it is
    contracted; attention is per head, so removing its q rows too changes nothing else. Proven here when the
    only objections are the kv broadcast itself and those contractions; ``mlist`` roles are rewritten in place
    (contracting columns → producer, q rows/bias/LoRA-B → consumer). Returns the remaining reasons.

    "Attention is per head" fails where something reads the class across heads on the q side — a norm over the
    whole q projection (OLMo-2, OLMoE: ``q_norm`` of size heads × head_dim) — because the producer-side proof
    accepted it only as a read of zeros, which the masked model no longer has: those classes stay refused,
    each read named. A per-head norm (Qwen3's ``q_norm`` of size head_dim) reduces the head dim only."""
    reach = flow.consumer_reach.get(k, [])
    reach_reasons = {r for r, _ in reach}
    capped = len(flow.violations.get(k, [])) >= MAX_VIOLATIONS  # more violations may have been dropped: no proof
    rest = [r for r in reasons if not r.startswith(_BROADCAST_REASONS) and r not in reach_reasons]
    if rest or not reach or capped:
        return reasons
    zero_params = {p for _, p in reach}
    live = flow.read_while_zero.get(k, [])
    if live:  # e.g. OLMo-2/OLMoE's q_norm: one RMSNorm over all heads' q rows, before the head reshape
        return reasons + [f"its q rows are read across query heads ({where}), but the query-head proof keeps them live (it "
                          f"zeroes the {', '.join(sorted(zero_params))} columns instead): removing a head changes that read"
                          for where in live]
    for m in mlist:
        if m.param in zero_params and m.axis == 1:
            m.role = "producer"
        elif m.role == "producer":
            m.role = "consumer"
    if not any(m.role == "producer" for m in mlist):
        return reasons
    return []


def _assign_ids(groups: list[Group]) -> None:
    seen: dict[str, int] = {}
    for g in sorted(groups, key=lambda g: (g.module, g.kind, not g.prunable, g.members[0].param, g.members[0].axis)):
        base = f"{g.module or 'model'}:{KIND_SUFFIX[g.kind]}"
        seen[base] = seen.get(base, 0) + 1
        g.id = base if seen[base] == 1 else f"{base}.{seen[base]}"
