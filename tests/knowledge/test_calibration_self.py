"""Self-generated calibration windows (``knowledge.calibration.self_generated``): sampled from the model itself, of
the length asked for, reproducible by seed, without touching the global RNG or the model's mode."""
from __future__ import annotations

import pytest
import torch

from lorashear.errors import LorashearError
from lorashear.knowledge.calibration import self_generated


def test_windows_start_at_bos_and_have_the_asked_shape(kmodel, ktokenizer):
    ids, info = self_generated(kmodel, ktokenizer, n_samples=5, seq_len=24, seed=0, batch_size=2)
    start = ktokenizer.bos_token_id if ktokenizer.bos_token_id is not None else ktokenizer.eos_token_id
    assert ids.shape == (5, 24) and ids.dtype == torch.long
    assert (ids[:, 0] == start).all()
    assert (info["specs"], info["n_samples"], info["seq_len"], info["tokens"]) == (["self"], 5, 24, 120)


def test_same_seed_same_windows_in_any_chunking_and_another_seed_differs(kmodel, ktokenizer):
    a, _ = self_generated(kmodel, ktokenizer, n_samples=4, seq_len=16, seed=3, batch_size=4)
    b, _ = self_generated(kmodel, ktokenizer, n_samples=4, seq_len=16, seed=3, batch_size=4)
    c, _ = self_generated(kmodel, ktokenizer, n_samples=4, seq_len=16, seed=4, batch_size=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_global_rng_and_training_mode_are_left_as_they_were(kmodel, ktokenizer):
    kmodel.train()
    state = torch.random.get_rng_state()
    try:
        self_generated(kmodel, ktokenizer, n_samples=2, seq_len=8, seed=0)
        assert torch.equal(torch.random.get_rng_state(), state) and kmodel.training
    finally:
        kmodel.eval()


def test_windows_are_sampled_at_temperature_one(kmodel, ktokenizer):
    """Tokens drawn from p have mean surprisal equal to p's entropy; greedy or cooler sampling would sit far below
    it (noise far above). 16 × 31 tokens: the standard error of the mean is ~0.1 nat, the tolerance 0.4."""
    ids, _ = self_generated(kmodel, ktokenizer, n_samples=16, seq_len=32, seed=0)
    with torch.no_grad():
        logp = torch.log_softmax(kmodel(input_ids=ids).logits[:, :-1].float(), dim=-1)
    surprisal = -logp.gather(-1, ids[:, 1:, None]).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    assert abs(float(surprisal - entropy)) < 0.4


def test_refuses_a_window_of_one_token(kmodel, ktokenizer):
    with pytest.raises(LorashearError, match="at least 2 tokens"):
        self_generated(kmodel, ktokenizer, n_samples=2, seq_len=1)
