import pytest
import torch

from lorashear import LorashearError
from lorashear.adapters import add_lora
from tiny_models import build


def test_adapters_are_seeded_and_only_lora_trains():
    a, b = add_lora(build("qwen2"), r=4, seed=3), add_lora(build("qwen2"), r=4, seed=3)
    la = {n: p for n, p in a.named_parameters() if p.requires_grad}
    assert la and all("lora_" in n for n in la)
    assert all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in la.items())


def test_a_target_the_model_lacks_is_one_line():
    with pytest.raises(LorashearError, match="cannot add LoRA adapters") as exc:
        add_lora(build("gpt2"), targets="q_proj,nonexistent")
    assert "\n" not in str(exc.value)
