"""Shared pytest set-up."""
import os
import shutil

import pytest


# ------------------------------------------------------------------------------------- browser tests
# dash[testing]'s dash_duo drives Debian's chromium + chromium-driver, headless unless LORASHEAR_TEST_HEADED=1,
# so the README's plain `pytest` command runs them on CI; without chromium they are skipped with a reason.
def pytest_configure(config):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    os.environ.setdefault("DASH_TEST_CHROMEPATH", chromium)
    if hasattr(config.option, "headless") and not os.environ.get("LORASHEAR_TEST_HEADED"):
        config.option.headless = True


def pytest_collection_modifyitems(config, items):
    have = os.path.exists(os.environ.get("DASH_TEST_CHROMEPATH", "")) and shutil.which("chromedriver")
    if have:
        return
    skip = pytest.mark.skip(reason="browser test: needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------------ shipped demo model/data
@pytest.fixture(scope="session")
def demo_tokenizer():
    """The shipped demo tokenizer (real BPE, loads in milliseconds)."""
    from transformers import AutoTokenizer

    from lorashear.data import DEMO_MODEL_DIR

    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo LLaMA (GQA, ~5 M parameters), fp32 on CPU, eval mode. Do not modify it in a test."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorashear.data import DEMO_MODEL_DIR

    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
