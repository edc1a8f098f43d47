"""segue's LM loaded from a `save_pretrained` folder against transformers' MusicgenForConditionalGeneration."""

import pytest
import torch

import support
from segue.models.lm.state import LMState
from segue.models.loading.builder import load_model

def test_logits_match_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    text = "warm analog pads, 90 bpm"
    inputs = tok([text], return_tensors="pt")
    ids = torch.randint(0, 2049, (1, 4, 12))  # random tokens, the special one included
    with torch.no_grad():
        ref = hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                 decoder_input_ids=ids.reshape(4, 12)).logits.reshape(1, 4, 12, -1)
    cond = tiny_segue.conditioner(text)
    for folded in (False, True):  # cross-attention as published, and with Wq / Wo folded into the memory
        state = LMState.allocate(tiny_segue.lm.cfg, 1, 64, 64, torch.device("cpu"), torch.float32)
        if folded:
            tiny_segue.lm.attach_condition(state, cond.cross_k, cond.cross_v, cond.mask, 1, fold=True)
            assert state.fold_rows == 1
        else:
            state.set_condition(cond.cross_k, cond.cross_v, cond.mask)
        ours = tiny_segue.lm(ids, state, last_only=False)
        rel = (ours - ref).abs().max() / ref.abs().max()
        assert rel <= 1e-4


def test_greedy_text_only_matches_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    for text, steps in (("dub techno", 24), ("a bright marimba loop with shakers", 9)):
        ref = support.hf_greedy_codes(hf, tok, text, steps)
        ours = support.generate_frames(tiny_segue, [text], steps - 3)  # T frames take T + 3 steps
        assert torch.equal(ours, ref)


def test_greedy_continuation_matches_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    audio = torch.randn(1, 1, 640 * 9 + 123) * 0.2
    ref = support.hf_greedy_codes(hf, tok, "jazz drums", 20, audio=audio)
    prompt = tiny_segue.encode(audio)
    assert torch.equal(ref[..., : prompt.shape[-1]], prompt)  # same prompt codes
    ours = support.generate_frames(tiny_segue, ["jazz drums"], 20 - 3, prompt)
    assert torch.equal(ours, ref)


def test_batched_prompts_of_different_lengths_match_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    texts = ["kick", "a long description of a slow ambient piece"]
    ref = support.hf_greedy_codes(hf, tok, texts, 15)
    ours = support.generate_frames(tiny_segue, texts, 12)
    assert torch.equal(ours, ref)


def test_stereo_matches_transformers(tiny_stereo):
    hf, tok, folder = tiny_stereo
    model = load_model(str(folder))
    assert model.channels == 2 and model.lm.cfg.delays == (0, 0, 1, 1, 2, 2, 3, 3)
    ref = support.hf_greedy_codes(hf, tok, "stereo strings", 16)
    assert torch.equal(support.generate_frames(model, ["stereo strings"], 13), ref)
    audio = torch.randn(1, 2, 640 * 6) * 0.2
    ref = support.hf_greedy_codes(hf, tok, "stereo strings", 12, audio=audio)
    assert torch.equal(support.generate_frames(model, ["stereo strings"], 9, model.encode(audio)), ref)
    with torch.no_grad():
        hf_audio = hf.generate(**tok(["x"], return_tensors="pt"), do_sample=False, guidance_scale=3.0,
                               max_new_tokens=8)
    codes = support.hf_greedy_codes(hf, tok, "x", 8)
    torch.testing.assert_close(model.decode(codes), hf_audio, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_runs_close_to_float32(tiny, dtype):
    hf, tok, folder = tiny
    m32 = load_model(str(folder))
    mlow = load_model(str(folder), dtype=dtype)
    assert mlow.lm.dtype == dtype and mlow.codec.dtype == torch.float32  # the codec stays float32
    cond32, condlow = m32.conditioner("pads"), mlow.conditioner("pads")
    ids = torch.randint(0, 2048, (1, 4, 10))
    outs = []
    for m, c in ((m32, cond32), (mlow, condlow)):
        st = LMState.allocate(m.lm.cfg, 1, 32, 32, torch.device("cpu"), m.lm.dtype)
        st.set_condition(c.cross_k, c.cross_v, c.mask)
        outs.append(m.lm(ids, st, last_only=False))
    assert outs[1].dtype == torch.float32  # logits are always float32 for sampling
    assert ((outs[0] - outs[1]).abs().max() / outs[0].abs().max()) < 0.05
