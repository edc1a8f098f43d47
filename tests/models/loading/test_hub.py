"""Hub ids: the local cache in offline mode, clear errors when the id is wrong or nothing is cached."""

import pytest
import torch

import support
from segue.models.errors import ModelNotFoundError, OfflineError
from segue.models.loading.builder import load_model
from segue.models.loading.hub import choose_weights, fetch


def test_offline_mode_loads_from_the_hf_cache(tiny, tiny_segue, hub_cache):
    support.hub_cache_entry(hub_cache, "acme/musicgen-tiny", tiny[2])
    model = load_model("acme/musicgen-tiny")
    assert model.info.folder.startswith(str(hub_cache))
    x = torch.randn(1, 1, 3200)
    assert torch.equal(model.codec.encode(x), tiny_segue.codec.encode(x))


def test_offline_with_nothing_cached_says_so():
    with pytest.raises(OfflineError, match="offline mode is on .* not in the local cache"):
        fetch("facebook/musicgen-small")


@pytest.mark.parametrize("ref, message", [
    ("no spaces allowed/x", "not a valid hub id"),
    ("./missing-folder", "no folder"),
    ("/abs/missing/folder", "no folder"),
])
def test_bad_references(ref, message):
    with pytest.raises(ModelNotFoundError, match=message):
        fetch(ref)


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        fetch(str(f))


def test_weight_choice_prefers_safetensors_then_bin_then_audiocraft():
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "state_dict.bin", "compression_state_dict.bin"]
    assert choose_weights(both) == ["model.safetensors"]
    sharded = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert choose_weights(sharded) == ["model.safetensors.index.json", "model-*.safetensors"]
    assert choose_weights(["pytorch_model.bin", "config.json"]) == ["pytorch_model.bin"]
    assert choose_weights(["state_dict.bin", "compression_state_dict.bin"])[0] == "state_dict.bin"
