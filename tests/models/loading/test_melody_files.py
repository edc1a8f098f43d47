"""MusicGen-Melody checkpoints in both layouts, as they break: each is one ModelFileError saying what is wrong."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import support
from segue.models.errors import ModelFileError
from segue.models.loading.builder import load_codec, load_model


@pytest.fixture(scope="module")
def melody_export(tiny_melody, tmp_path_factory):
    hf, tok, _ = tiny_melody
    root = tmp_path_factory.mktemp("melody-ac")
    t5 = support.save_t5(hf, tok, root / "t5")
    return support.export_audiocraft(hf, tok, root / "export", t5_name=str(t5),
                                     solver="musicgen/musicgen_melody_32khz")


def test_codec_of_a_melody_repo_loads_alone(tiny_melody, tiny_melody_segue):
    codec = load_codec(str(tiny_melody[2]))
    x = torch.randn(1, 1, 3200)
    assert codec.lm is None and torch.equal(codec.codec.encode(x), tiny_melody_segue.codec.encode(x))


def test_feature_extractor_config_sets_the_chroma_rate(tiny_melody, tmp_path):
    folder = shutil.copytree(tiny_melody[2], tmp_path / "with-preprocessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "MusicgenMelodyFeatureExtractor", "hop_length": 4096, "n_fft": 16384,
         "sampling_rate": 32000, "num_chroma": 12}))
    model = load_model(str(folder))
    assert model.lm.cfg.chroma_rate == 32000 / 4096 and (model.chroma.n_fft, model.chroma.hop_length) == (16384, 4096)


def _damage_transformers(folder, damage):
    weights = folder / "model.safetensors"
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    sd = load_file(str(weights))
    if damage == "no chroma projection":
        del sd["audio_enc_to_dec_proj.weight"]
    elif damage == "chroma projection shape":
        sd["audio_enc_to_dec_proj.weight"] = sd["audio_enc_to_dec_proj.weight"][:, :11].contiguous()
    elif damage == "called a text MusicGen":
        cfg["model_type"] = "musicgen"
    elif damage == "chroma length 0":
        cfg["chroma_length"] = 0
    elif damage == "unreadable preprocessor":
        (folder / "preprocessor_config.json").write_text("{oops")
    elif damage == "other chroma window":
        (folder / "preprocessor_config.json").write_text(json.dumps({"hop_length": 4096, "n_fft": 8192}))
    save_file(sd, str(weights), metadata={"format": "pt"})
    cfg_path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage, message", [
    ("no chroma projection", "missing"),
    ("chroma projection shape", "shape"),
    ("called a text MusicGen", "lack cross-attention"),
    ("chroma length 0", "chroma_length"),
    ("unreadable preprocessor", "not a readable feature extractor config"),
    ("other chroma window", "n_fft 8192"),
])
def test_broken_transformers_melody_folders(tiny_melody, tmp_path, damage, message):
    folder = shutil.copytree(tiny_melody[2], tmp_path / "broken")
    _damage_transformers(folder, damage)
    with pytest.raises(ModelFileError, match=message):
        load_model(str(folder))


def _damage_audiocraft(folder, damage):
    pkg = torch.load(folder / "state_dict.bin", weights_only=True)
    state = pkg["best_state"]
    if damage == "argmax false":
        pkg["xp.cfg"] = pkg["xp.cfg"].replace("argmax: true", "argmax: false")
    elif damage == "chroma only":
        pkg["xp.cfg"] = pkg["xp.cfg"].replace("prepend: [self_wav, description]", "prepend: [self_wav]")
    elif damage == "other melody conditioner":
        pkg["xp.cfg"] = pkg["xp.cfg"].replace("model: chroma_stem", "model: chroma")
    elif damage == "no chroma projection":
        del state["condition_provider.conditioners.self_wav.output_proj.weight"]
    elif damage == "cross-attention weights":
        d = state["emb.0.weight"].shape[1]
        state["transformer.layers.0.cross_attention.in_proj_weight"] = torch.zeros(3 * d, d, dtype=torch.half)
    torch.save(pkg, folder / "state_dict.bin")


@pytest.mark.parametrize("damage, message", [
    ("argmax false", "argmax"),
    ("chroma only", "prepend"),
    ("other melody conditioner", "chroma_stem"),
    ("no chroma projection", "missing"),
    ("cross-attention weights", "do not match"),
])
def test_broken_audiocraft_melody_exports(melody_export, tmp_path, damage, message):
    folder = shutil.copytree(melody_export, tmp_path / "broken")
    _damage_audiocraft(folder, damage)
    with pytest.raises(ModelFileError, match=message):
        load_model(str(folder))


def test_the_export_itself_loads(melody_export):
    model = load_model(str(melody_export))
    assert model.info.kind == "musicgen-melody" and model.lm.cfg.chroma_length == 235
    assert model.lm.cfg.chroma_rate == 32000 / 4096 and model.lm.dtype == torch.float32
