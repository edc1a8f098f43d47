"""Folders in the transformers layout, as published and as they break."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import support
from segue.models.errors import ModelFileError
from segue.models.loading.builder import load_codec, load_model


def tokens_of(model, text="rain on a tin roof", frames=10):
    return support.generate_frames(model, [text], frames)


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_safetensors_load_like_a_single_file(tiny, tiny_segue, tmp_path):
    hf, tok, _ = tiny
    folder = tmp_path / "sharded"
    hf.save_pretrained(str(folder), max_shard_size="200KB")
    tok.save_pretrained(str(folder))
    assert (folder / "model.safetensors.index.json").exists() and not (folder / "model.safetensors").exists()
    assert torch.equal(tokens_of(load_model(str(folder))), tokens_of(tiny_segue))


def test_pytorch_bin_with_old_weight_norm_keys(tiny, tiny_segue, tmp_path):
    """The 2023 repos ship pytorch_model.bin with weight_g / weight_v keys."""
    hf, tok, src = tiny
    folder = tmp_path / "bin"
    folder.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                             "weight_v"): v
          for k, v in load_file(str(src / "model.safetensors")).items()}
    torch.save(sd, folder / "pytorch_model.bin")
    model = load_model(str(folder))
    assert torch.equal(tokens_of(model), tokens_of(tiny_segue))
    x = torch.randn(1, 1, 6400) * 0.2
    assert torch.equal(model.codec.encode(x), tiny_segue.codec.encode(x))


def test_encodec_repo_is_a_codec_not_a_generator(tmp_path):
    hf = support.hf_encodec("32k", seed=1)
    hf.save_pretrained(str(tmp_path / "encodec_32khz"))
    codec = load_codec(str(tmp_path / "encodec_32khz")).codec
    x = torch.randn(1, 1, 6400) * 0.2
    with torch.no_grad():
        assert torch.equal(codec.encode(x), hf.encode(x, bandwidth=2.2).audio_codes[0])
    with pytest.raises(ModelFileError, match="segue codec"):
        load_model(str(tmp_path / "encodec_32khz"))


def test_codec_of_a_musicgen_repo_loads_alone(tiny, tiny_segue):
    codec = load_codec(str(tiny[2]))
    assert codec.lm is None
    x = torch.randn(1, 1, 3200)
    assert torch.equal(codec.codec.encode(x), tiny_segue.codec.encode(x))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable safetensors"),
    ("no_weights", "no weights"),
    ("bad_json", "not valid JSON"),
    ("melody", "Melody"),
    ("no_tokenizer", "tokenizer"),
    ("missing_key", "missing"),
    ("wrong_shape", "LM weights do not match|shape"),
    ("empty_folder", "neither"),
])
def test_broken_folders_are_one_sentence(tiny, tmp_path, damage, message):
    folder = copy_folder(tiny[2], tmp_path / damage)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif damage == "melody":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "musicgen_melody"
        (folder / "config.json").write_text(json.dumps(cfg))
    elif damage == "no_tokenizer":
        for f in folder.glob("tokenizer*"):
            f.unlink()
    elif damage in ("missing_key", "wrong_shape"):
        from safetensors.torch import save_file

        sd = load_file(str(weights))
        if damage == "missing_key":
            del sd["decoder.lm_heads.2.weight"]
        else:
            sd["decoder.lm_heads.2.weight"] = sd["decoder.lm_heads.2.weight"][:100]
        save_file(sd, str(weights), metadata={"format": "pt"})
    elif damage == "empty_folder":
        for f in folder.iterdir():
            f.unlink()
    with pytest.raises(ModelFileError, match=message):
        load_model(str(folder))
