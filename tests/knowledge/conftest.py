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


def _compute_reports(kmodel, kgroups, ksamples):
    from lorashear.knowledge import analyze

    samples, info = ksamples
    common = dict(groups=kgroups, data=info, source="demo")
    return {
        "ablation": analyze(kmodel, samples, estimator="ablation", bins={"attention": 1, "mlp": 128, "hidden": 64}, **common),
        "lora_taylor": analyze(kmodel, samples, estimator="lora_taylor", **common),
        "taylor": analyze(kmodel, samples, estimator="taylor", **common),
        "magnitude": analyze(kmodel, None, estimator="magnitude", **common),
    }


@pytest.fixture(scope="session")
def reports(kmodel, kgroups, ksamples, tmp_path_factory, request):
    """One report per estimator on the same windows; ablation at 1 head / 128 MLP channels / 64 hidden channels.

    Under pytest-xdist the first worker computes them and saves the files; the others load them (a report
    round-trips exactly, see test_knowledge_report), so the ~1 minute of estimator work is paid once."""
    if not hasattr(request.config, "workerinput"):  # not running under xdist
        return _compute_reports(kmodel, kgroups, ksamples)
    import fcntl

    from lorashear.knowledge import load_report

    root = tmp_path_factory.getbasetemp().parent / "knowledge_reports"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        names = ("ablation", "lora_taylor", "taylor", "magnitude")
        if all((root / f"{n}.parquet").exists() for n in names):
            return {n: load_report(root / f"{n}.parquet") for n in names}
        out = _compute_reports(kmodel, kgroups, ksamples)
        for n, rep in out.items():
            rep.save(root / f"{n}.parquet")
        return out


@pytest.fixture
def fresh_copy(kmodel):
    return copy.deepcopy(kmodel)
