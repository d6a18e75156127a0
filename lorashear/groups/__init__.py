"""Minimally removable structures ("groups"), discovered from the operator graph by dimension propagation.

Pass 1 (``propagate``) walks the graph once and relates every tensor axis to its inputs' axes through the
op's semantics (``axes.AxisAlgebra``), one rule per op in ``axis_rules.AXIS_RULES``: element-wise ops tie
equal axes, ``linear`` ties its input's last axis to the weight's columns and its output to the weight's
rows, views factor axes, ``sdpa`` ties heads (a kv head with its query heads under GQA) and contracts the
head dim. Each resulting leaf class that touches a parameter is a candidate group; a unit is one index of it.

Pass 2 (``zeroflow``, rules in ``zero_rules.ZERO_RULES``) proves zero-invariance per class: with every
*producer* slice of a unit set to zero, is every value that carries the class zero at that unit wherever it
is contracted, reduced or leaves the model? Mean reductions (RMSNorm) are allowed when an exact weight/eps
compensation exists. ``build`` assembles the groups and their verdicts. Anything the rules do not understand
marks the classes it touches unprunable with a reason naming the op and node — never a wrong group.
"""
from .build import find_groups
from .group import KIND_SUFFIX, Group, Member
from .io import groups_to_json, load_groups, save_groups

__all__ = ["Group", "Member", "KIND_SUFFIX", "find_groups", "groups_to_json", "load_groups", "save_groups"]
