"""segue's LM loaded from a `save_pretrained` folder against transformers' MusicgenForConditionalGeneration."""

import pytest
import torch

import near_ties
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
        near_ties.assert_generates(tiny_segue, [text], steps - 3, ref)  # T frames take T + 3 steps


def test_greedy_continuation_matches_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    audio = torch.randn(1, 1, 640 * 9 + 123) * 0.2
    ref = support.hf_greedy_codes(hf, tok, "jazz drums", 20, audio=audio)
    prompt = tiny_segue.encode(audio)
    assert torch.equal(ref[..., : prompt.shape[-1]], prompt)  # same prompt codes
    near_ties.assert_generates(tiny_segue, ["jazz drums"], 20 - 3, ref, prompt)


def test_batched_prompts_of_different_lengths_match_transformers(tiny, tiny_segue):
    hf, tok, _ = tiny
    texts = ["kick", "a long description of a slow ambient piece"]
    ref = support.hf_greedy_codes(hf, tok, texts, 15)
    near_ties.assert_generates(tiny_segue, texts, 12, ref)


def test_stereo_matches_transformers(tiny_stereo):
    hf, tok, folder = tiny_stereo
    model = load_model(str(folder))
    assert model.channels == 2 and model.lm.cfg.delays == (0, 0, 1, 1, 2, 2, 3, 3)
    ref = support.hf_greedy_codes(hf, tok, "stereo strings", 16)
    near_ties.assert_generates(model, ["stereo strings"], 13, ref)
    audio = torch.randn(1, 2, 640 * 6) * 0.2
    ref = support.hf_greedy_codes(hf, tok, "stereo strings", 12, audio=audio)
    near_ties.assert_generates(model, ["stereo strings"], 9, ref, model.encode(audio))
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


def test_mono_prompt_to_a_stereo_model_and_stereo_to_mono_do_what_the_references_do(tiny, tiny_segue, tiny_stereo):
    """A mono prompt to a stereo model: transformers' forward encodes it once and repeats each codebook for L and R
    (its generate() refuses mono input for a stereo model); audiocraft's convert_audio duplicates the channel,
    which encodes to the same codes. A stereo prompt to a mono model is averaged (audiocraft's convert_audio)."""
    from segue.models.audio import to_model_audio
    from segue.models.generation import prompt_codes

    hf, tok, folder = tiny_stereo
    stereo = load_model(str(folder))
    mono_audio = (torch.randn(1, 1, 640 * 6) * 0.2).numpy()
    codes = prompt_codes(stereo, to_model_audio(mono_audio[0], 32000, 32000, 2))
    assert torch.equal(codes[:, 0::2], codes[:, 1::2])  # L and R codebooks are the same
    with torch.no_grad():
        once = hf.audio_encoder.encode(torch.from_numpy(mono_audio), bandwidth=2.2).audio_codes[0]  # [1, 4, T]
    assert torch.equal(codes, once.repeat_interleave(2, dim=1))
    ref = support.hf_greedy_codes(hf, tok, "strings", 12, audio=torch.from_numpy(mono_audio).repeat(1, 2, 1))
    near_ties.assert_generates(stereo, ["strings"], 9, ref, codes)

    hf_mono, tok_mono, _ = tiny
    two = torch.randn(1, 2, 640 * 6) * 0.2
    codes = prompt_codes(tiny_segue, to_model_audio(two[0].numpy(), 32000, 32000, 1))
    ref = support.hf_greedy_codes(hf_mono, tok_mono, "strings", 12, audio=two.mean(1, keepdim=True))
    near_ties.assert_generates(tiny_segue, ["strings"], 9, ref, codes)
