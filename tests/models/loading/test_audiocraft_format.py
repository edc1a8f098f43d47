"""audiocraft exports (`state_dict.bin` + `compression_state_dict.bin` with `xp.cfg`), built from the same weights
as a transformers model, load to the same model."""

import pytest
import torch

import model_folders
import near_ties
import support
from segue.models.errors import ModelFileError
from segue.models.loading.audiocraft_format import parse_xp_cfg
from segue.models.loading.builder import load_codec, load_model


def greedy(model, text, frames, prompt=None):
    return support.generate_frames(model, [text], frames, prompt)


@pytest.fixture(scope="module")
def t5_folder(tiny, tmp_path_factory):
    hf, tok, _ = tiny
    return support.save_t5(hf, tok, tmp_path_factory.mktemp("t5"))


def test_full_export_matches_transformers(tiny, t5_folder, tmp_path):
    hf, tok, _ = tiny
    folder = support.export_audiocraft(hf, tok, tmp_path / "musicgen-ac", t5_name=str(t5_folder))
    model = load_model(str(folder))
    assert model.info.layout == "audiocraft" and model.info.kind == "musicgen"
    assert model.lm.cfg.max_duration == 30.0
    # The released LM weights are float16: compare with transformers run on the same rounded weights.
    ref_model, _ = support.hf_musicgen(seed=0)
    ref_model.load_state_dict({k: (v.half().float() if k.startswith(("decoder.", "enc_to_dec")) else v)
                               for k, v in hf.state_dict().items()})
    near_ties.assert_generates(model, ["tabla groove"], 12, support.hf_greedy_codes(ref_model, tok, "tabla groove", 15))
    audio = torch.randn(1, 1, 640 * 5) * 0.2
    assert torch.equal(model.codec.encode(audio), support.hf_greedy_codes(ref_model, tok, "x", 4, audio=audio)[..., :5])


def test_pointer_codec_fetches_the_named_encodec(tiny, t5_folder, tmp_path):
    hf, tok, _ = tiny
    enc_folder = tmp_path / "encodec_32khz"
    hf.audio_encoder.save_pretrained(str(enc_folder))
    folder = support.export_audiocraft(hf, tok, tmp_path / "melody-large-like", t5_name=str(t5_folder),
                                       pointer=str(enc_folder))
    assert (folder / "compression_state_dict.bin").stat().st_size < 2000  # the 589-byte pointer variant
    codec = load_codec(str(folder)).codec
    x = torch.randn(1, 1, 6400) * 0.2
    with torch.no_grad():
        assert torch.equal(codec.encode(x), hf.audio_encoder.encode(x, bandwidth=2.2).audio_codes[0])


def test_audiogen_style_export_loads_and_generates(tmp_path):
    """AudioGen: 16 kHz codec (hop 320, constant padding), 10 s segments, its own solver name."""
    hf, tok = model_folders.hf_audiogen()
    folder = model_folders.audiogen(tmp_path / "audiogen", (hf, tok))
    model = load_model(str(folder))
    assert model.info.kind == "audiogen" and model.sample_rate == 16000 and model.hop_length == 320
    assert model.lm.cfg.max_duration == 10.0 and model.codec.cfg.pad_mode == "constant"
    frames = greedy(model, "dog barking", 20)
    assert frames.shape == (1, 4, 20)
    x = torch.randn(1, 1, 3200) * 0.2
    with torch.no_grad():
        assert torch.equal(model.codec.encode(x), hf.audio_encoder.encode(x, bandwidth=2.2).audio_codes[0])


def test_xp_cfg_interpolations_resolve():
    cfg = parse_xp_cfg("sample_rate: 32000\nencodec:\n  sample_rate: ${sample_rate}\n  causal: false\n"
                       "seanet:\n  causal: ${encodec.causal}\n", "x")
    assert cfg["encodec"]["sample_rate"] == 32000 and cfg["seanet"]["causal"] is False
    with pytest.raises(ModelFileError, match="missing key"):
        parse_xp_cfg("a: ${b.c}\n", "x")
    with pytest.raises(ModelFileError, match="YAML"):
        parse_xp_cfg("a: [1, 2\n", "x")


def test_unsupported_and_corrupt_exports(tiny, t5_folder, tmp_path):
    hf, tok, _ = tiny
    folder = support.export_audiocraft(hf, tok, tmp_path / "ac", t5_name=str(t5_folder))
    pkg = torch.load(folder / "state_dict.bin", weights_only=True)
    pkg["xp.cfg"] = pkg["xp.cfg"].replace("prepend: []", "prepend: [self_wav]")
    torch.save(pkg, folder / "state_dict.bin")
    with pytest.raises(ModelFileError, match="prepend"):  # only the melody fusing (self_wav + description)
        load_model(str(folder))
    (folder / "state_dict.bin").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not a readable PyTorch checkpoint"):
        load_model(str(folder))
