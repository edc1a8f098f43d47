"""Text conditioning: cached per prompt, bounded, and audiocraft's null condition for missing text."""

import torch

from segue.models.lm.conditioning import Conditioner, stack_rows


def test_prompts_are_encoded_once_and_the_cache_is_bounded(tiny_segue):
    cond = Conditioner(tiny_segue.lm, tiny_segue.text, cache_size=2)
    calls = []
    encode = cond.text.encode
    cond.text.encode = lambda text: calls.append(text) or encode(text)
    try:
        a = cond("house")
        assert cond("house") is a and calls == ["house"]  # the second request is a cache hit
        cond("techno")
        cond("ambient")  # evicts "house", the least recently used
        assert len(cond._cache) == 2 and "house" not in cond._cache
        assert cond("house") is not a and calls == ["house", "techno", "ambient", "house"]
    finally:
        cond.text.encode = encode


def test_missing_text_is_the_null_condition(tiny_segue):
    cond = tiny_segue.conditioner
    for text in (None, ""):
        c = cond(text)
        assert c.text is None and not c.mask.any()
        assert not c.cross_k.any() and not c.cross_v.any()


def test_cfg_rows_are_conditional_then_null(tiny_segue):
    cond = tiny_segue.conditioner
    k, v, mask = stack_rows([cond("a"), cond("a much longer prompt")], cond.null())
    L, R, H, S, D = k.shape
    assert R == 4 and S == cond("a much longer prompt").length
    assert mask[0].sum() == cond("a").length and mask[1].all()  # shorter prompt padded, masked
    assert not mask[2:].any() and not k[:, 2:].any() and not v[:, 2:].any()  # null rows: no token, zero memory
    assert torch.equal(k[:, 0, :, : cond("a").length], cond("a").cross_k[:, 0])
