import pytest
import torch

from lorashear import LorashearError
from lorashear.adapters import add_lora, is_lora_param
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


def test_is_lora_param_names_exactly_the_adapter_tensors():
    """On a real PEFT model (linear and embedding adapters): the LoRA factors and nothing else, base weights included
    under their PEFT names (``base_layer``)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"]))
    names = [n for n, _ in model.named_parameters()]
    lora = {n for n in names if is_lora_param(n)}
    assert lora == {n for n in names if ".lora_" in n} and any("lora_embedding_A" in n for n in lora)
    assert not is_lora_param("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    assert not is_lora_param("model.layers.0.self_attn.q_proj.weight")
