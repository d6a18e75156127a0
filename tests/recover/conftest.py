"""A pruned demo model (25 % of every layer's MLP channels removed, no training) with its sidecar."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pruned_demo(tmp_path_factory, demo_model, demo_tokenizer):
    import copy

    from lorashear import compress, find_groups, save_pruned, trace
    from lorashear.data import DEMO_MODEL_DIR

    model = copy.deepcopy(demo_model)
    groups = find_groups(trace(model))
    removal = {g.id: list(range(0, g.n_units, 4)) for g in groups if g.kind == "mlp" and g.prunable}
    small, report = compress(model, groups, removal)
    out = tmp_path_factory.mktemp("pruned") / "model"
    save_pruned(small, out, report=report, tokenizer=demo_tokenizer,
                provenance={"method": "test", "source": str(DEMO_MODEL_DIR)})
    return out
