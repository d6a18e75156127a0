"""Shared, computed-once inputs of the knowledge tests: the real demo model, its real groups, real calibration
windows from the demo corpus, and one report per estimator (the expensive part, ~1 minute in all)."""
import copy

import pytest
import torch


@pytest.fixture(scope="session")
def kmodel():
    """A private copy of the demo model: estimators zero/restore slices and add/remove LoRA in place."""
    from transformers import AutoModelForCausalLM

    from lorashear.data import DEMO_MODEL_DIR

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def ktokenizer():
    from transformers import AutoTokenizer

    from lorashear.data import DEMO_MODEL_DIR

    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


@pytest.fixture(scope="session")
def kgroups(kmodel):
    from lorashear.groups import find_groups
    from lorashear.trace import trace

    return find_groups(trace(kmodel))


@pytest.fixture(scope="session")
def ksamples(kmodel, ktokenizer):
    """8 windows of 64 tokens, spread over the three demo sources (validation split)."""
    from lorashear.knowledge import calibration_data

    samples, info = calibration_data(ktokenizer, ["demo"], n_samples=8, seq_len=64, seed=0, model=kmodel)
    return samples, info


@pytest.fixture(scope="session")
def reports(kmodel, kgroups, ksamples):
    """One report per estimator on the same windows; ablation at 1 head / 128 MLP channels / 64 hidden channels."""
    from lorashear.knowledge import analyze

    samples, info = ksamples
    common = dict(groups=kgroups, data=info, source="demo")
    return {
        "ablation": analyze(kmodel, samples, estimator="ablation", bins={"attention": 1, "mlp": 128, "hidden": 64}, **common),
        "lora_taylor": analyze(kmodel, samples, estimator="lora_taylor", **common),
        "taylor": analyze(kmodel, samples, estimator="taylor", **common),
        "magnitude": analyze(kmodel, None, estimator="magnitude", **common),
    }


@pytest.fixture
def fresh_copy(kmodel):
    return copy.deepcopy(kmodel)
