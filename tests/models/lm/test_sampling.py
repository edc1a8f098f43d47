"""Device-side sampling follows audiocraft's rules and draws from the right distribution."""

import pytest
import torch

from segue.models.lm.config import SamplingParams
from segue.models.lm.sampling import cfg_combine, sample


def draws(logits, n=20000, **kw):
    gen = torch.Generator().manual_seed(0)
    batch = logits.expand(n, -1)
    args = dict(temperature=1.0, top_k=0, top_p=0.0, use_top_p=False, greedy=False)
    args.update(kw)
    return sample(batch, generator=gen, **args)


def test_categorical_draws_follow_the_softmax():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    counts = torch.bincount(draws(probs.log()[None]), minlength=4).float() / 20000
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)


def test_top_k_keeps_the_k_likeliest_renormalised():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    counts = torch.bincount(draws(probs.log()[None], top_k=2), minlength=4).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([4 / 7, 3 / 7, 0, 0]), atol=0.015, rtol=0)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = draws(probs.log()[None], top_p=0.7, use_top_p=True)
    assert set(out.tolist()) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two entries


def test_low_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    hot = (draws(logits, temperature=2.0) == 0).float().mean()
    cold = (draws(logits, temperature=0.3) == 0).float().mean()
    assert cold > 0.9 > hot


def test_greedy_is_argmax_and_cfg_extrapolates():
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.0, 3.0]])  # conditional row, null row
    guided = cfg_combine(logits, 3.0)
    torch.testing.assert_close(guided, torch.tensor([[0.0, 6.0, -3.0]]))
    assert sample(guided, 1.0, 0, 0.0, False, True).tolist() == [1]


def test_sampling_params_validate():
    assert SamplingParams().top_k == 250 and SamplingParams().cfg_coef == 3.0  # audiocraft defaults
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=1.5), dict(cfg_coef=-0.1)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
