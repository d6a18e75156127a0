"""The distillation loss against hand-computed KL (temperature, top-k, pure KD), the corrected teacher's cache, and
the settings that ask for them — on tiny real HF models."""
from __future__ import annotations

import math

import pytest
import torch

from lorashear import LorashearError
from lorashear.data import PackedMixture
from lorashear.distill import Budget, build_teacher, corrected_teacher, kd_per_token, loss_fn, teacher_key, train_full
from tests.tiny_models import build


def _kl_by_hand(s: list[float], t: list[float], T: float, k: int | None = None) -> float:
    """T² · Σ p_t (log p_t − log p_s) with plain floats; ``k``: over the teacher's top-k entries, renormalised."""
    idx = sorted(range(len(t)), key=lambda i: -t[i])[:k] if k else list(range(len(t)))
    ts, ss = [t[i] / T for i in idx], [s[i] / T for i in idx]
    zt, zs = sum(math.exp(x) for x in ts), sum(math.exp(x) for x in ss)
    pt = [math.exp(x) / zt for x in ts]
    ps = [math.exp(x) / zs for x in ss]
    return T * T * sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))


@pytest.mark.parametrize("T,k", [(1.0, None), (2.0, None), (1.0, 3), (0.5, 2)])
def test_kd_term_is_the_hand_computed_kl(T, k):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    got = kd_per_token(s, t, T, k)
    want = [[_kl_by_hand(s[b, i].tolist(), t[b, i].tolist(), T, k) for i in range(3)] for b in range(2)]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)


def _batch(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 9), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt: no loss on these targets
    return {"input_ids": ids, "labels": labels}


@pytest.fixture(scope="module")
def pair():
    return build("llama", seed=0).eval(), build("llama", seed=1).eval()


@pytest.mark.parametrize("T,k", [(1.0, None), (2.0, 5)])
def test_loss_is_next_token_plus_weighted_kl_over_labelled_tokens(pair, T, k):
    student, teacher = pair
    batch = _batch(64)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = kd = 0.0
    n = 0
    for b in range(2):
        for i in range(labels.shape[1]):
            y = int(labels[b, i])
            if y == -100:
                continue
            row = s[b, i].tolist()
            ce += -(row[y] - math.log(sum(math.exp(x) for x in row)))
            kd += _kl_by_hand(row, t[b, i].tolist(), T, k)
            n += 1
    fn = loss_fn(teacher, 0.7, temperature=T, top_k=k)
    with torch.no_grad():
        assert float(fn(student, batch, "sum")) == pytest.approx(ce + 0.7 * kd, rel=1e-5)
        assert float(fn(student, batch, "mean")) == pytest.approx((ce + 0.7 * kd) / n, rel=1e-5)


def test_pure_kd_ignores_the_labels(pair):
    student, teacher = pair
    a = _batch(64)
    b = {**a, "labels": torch.where(a["labels"] == -100, a["labels"], (a["labels"] + 1) % 64)}  # other targets
    pure, mixed = loss_fn(teacher, 1.0, pure=True), loss_fn(teacher, 1.0)
    with torch.no_grad():
        assert torch.equal(pure(student, a, "mean"), pure(student, b, "mean"))
        assert not torch.equal(mixed(student, a, "mean"), mixed(student, b, "mean"))


def test_the_teacher_gets_no_gradient(pair):
    student, teacher = pair
    fn = loss_fn(teacher.requires_grad_(True), 1.0)
    fn(student, _batch(64), "mean").backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    student.zero_grad(set_to_none=True)
    teacher.requires_grad_(False)


# ------------------------------------------------------------------------------------------ the teacher
def _packed(vocab: int = 64) -> PackedMixture:
    g = torch.Generator().manual_seed(0)
    return PackedMixture({"a": torch.randint(0, vocab, (16, 16), generator=g),
                          "b": torch.randint(0, vocab, (16, 16), generator=g)}, {"a": 0.5, "b": 0.5})


BUDGET = Budget(steps=6, batch_size=2, seq_len=16, lr=1e-2, lora_r=4, lora_alpha=8.0, lora_targets="all-linear", seed=0)


def test_finetuned_teacher_is_cached_and_reused_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path))
    seen: list[str] = []
    first, info1 = corrected_teacher(build("llama"), _packed(), BUDGET, progress=lambda f, s: seen.append(s))
    assert not info1["reused"] and sum("step" in s for s in seen) == BUDGET.steps
    assert (tmp_path / "teachers" / info1["key"] / "adapter.safetensors").is_file()
    seen.clear()
    second, info2 = corrected_teacher(build("llama"), _packed(), BUDGET, progress=lambda f, s: seen.append(s))
    assert info2["reused"] and info2["key"] == info1["key"] and not any("step" in s for s in seen)
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)  # the reused teacher is the trained one, bit for bit
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"],
                           build("llama").state_dict()["model.layers.0.mlp.up_proj.weight"])  # it was trained
    assert not first.training and not any(p.requires_grad for p in first.parameters())


def test_full_reference_trains_every_parameter_and_caches_nothing(tmp_path, monkeypatch):
    """The dense --train full reference: no adapters, every tensor moves (embeddings and norms too), one loss per
    step, and nothing lands in the teacher cache (it is a reference, not a teacher)."""
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path))
    before = build("llama").state_dict()
    model, losses = train_full(build("llama"), _packed(), BUDGET)
    after = model.state_dict()
    assert len(losses) == BUDGET.steps and all(math.isfinite(x) for x in losses)
    assert set(after) == set(before)  # no LoRA factors were added
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    assert not (tmp_path / "teachers").exists()


def test_teacher_key_follows_model_data_and_budget():
    m = build("llama")
    key = teacher_key(m, _packed(), BUDGET)
    assert teacher_key(build("llama"), _packed(), BUDGET) == key
    assert teacher_key(build("llama", seed=3), _packed(), BUDGET) != key
    assert teacher_key(m, _packed(), Budget(**{**BUDGET.__dict__, "seed": 1})) != key
    assert teacher_key(m, _packed(), BUDGET, weights={"a": 1.0, "b": 0.0}) != key
    other = _packed()
    other.blocks["a"][0, 0] += 1
    assert teacher_key(m, other, BUDGET) != key


def test_a_cosine_budget_is_another_teacher_and_a_constant_one_keeps_the_old_key():
    """A teacher trained with a decaying lr is another teacher; a constant-lr budget hashes as before schedules
    existed (no ``lr_schedule`` in the key), so the teachers already cached are still found."""
    m = build("llama")
    assert "lr_schedule" not in BUDGET.key() and BUDGET.key() == {k: v for k, v in BUDGET.__dict__.items()
                                                                  if k != "lr_schedule"}
    cosine = Budget(**{**BUDGET.__dict__, "lr_schedule": "cosine"})
    assert cosine.key()["lr_schedule"] == "cosine"
    assert teacher_key(m, _packed(), cosine) != teacher_key(m, _packed(), BUDGET)


def test_a_cosine_budget_trains_differently_from_a_constant_one():
    a, _ = train_full(build("llama"), _packed(), BUDGET)
    b, _ = train_full(build("llama"), _packed(), Budget(**{**BUDGET.__dict__, "lr_schedule": "cosine"}))
    w = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(a.state_dict()[w], b.state_dict()[w])


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path):
    folder = tmp_path / "t"
    build("llama").save_pretrained(folder)
    with pytest.raises(LorashearError, match="must share the student's vocabulary"):
        build_teacher(str(folder), lambda: None, packed=None, budget=BUDGET, device="cpu", vocab=100)
    teacher, info = build_teacher(str(folder), lambda: None, packed=None, budget=BUDGET, device="cpu", vocab=64)
    assert info == {"kind": "folder", "path": str(folder)} and not teacher.training


# ------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("cls", ["prune", "recover"])
def test_distilling_defaults_to_the_finetuned_teacher_and_a_teacher_needs_distill(cls):
    from lorashear.prune.settings import PruneSettings
    from lorashear.recover.settings import RecoverSettings
    from lorashear.settings import SettingsError

    S = {"prune": PruneSettings, "recover": RecoverSettings}[cls]
    assert S(distill=0.0).teacher is None and S(distill=0.5).teacher == "finetuned"
    assert S(distill=0.5, teacher="dense").teacher == "dense"
    with pytest.raises(SettingsError) as e:
        S(distill=0.0, teacher="dense", pure_kd=True)
    assert set(e.value.errors) == {"teacher", "pure_kd"}


@pytest.mark.parametrize("cls", ["prune", "recover"])
def test_cli_flags_come_from_the_one_declaration(cls):
    import argparse

    from lorashear.prune.settings import PruneSettings
    from lorashear.recover.settings import RecoverSettings
    from lorashear.settings import add_arguments, from_args

    S = {"prune": PruneSettings, "recover": RecoverSettings}[cls]
    p = argparse.ArgumentParser()
    add_arguments(p, S)
    extra = ["--ratio", "0.2"] if cls == "prune" else []
    st = from_args(S, p.parse_args(extra + ["--distill", "1", "--teacher", "dense", "--pure-kd", "--kd-temperature",
                                            "2", "--kd-top-k", "50"]))
    assert (st.distill, st.teacher, st.pure_kd, st.kd_temperature, st.kd_top_k) == (1.0, "dense", True, 2.0, 50)


def test_a_teacher_folder_that_is_not_there_is_refused_before_the_run(tmp_path):
    from lorashear.prune import prune

    with pytest.raises(LorashearError, match="^teacher: "):
        prune("demo", tmp_path / "out", distill=1.0, teacher=str(tmp_path / "nope"), steps=4)
    assert not (tmp_path / "out").exists()
