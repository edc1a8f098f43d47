"""Test-wide set-up: no network, a private hub cache, and the tiny reference models built once per session."""

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: tests never reach the network or the user's cache.
_HF_HOME = tempfile.mkdtemp(prefix="segue-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="segue-test-config-")  # MIDI learn never saves for real
os.environ["SEGUE_CACHE_DIR"] = tempfile.mkdtemp(prefix="segue-test-cache-")  # `--dtype auto` choices
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

import melody_support  # noqa: E402
import support  # noqa: E402


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(transformers model, tokenizer, folder saved with save_pretrained) for a tiny mono MusicGen."""
    model, tok = support.hf_musicgen(seed=0)
    folder = support.save_musicgen(model, tok, tmp_path_factory.mktemp("tiny-musicgen"))
    return model, tok, folder


@pytest.fixture(scope="session")
def tiny_stereo(tmp_path_factory):
    model, tok = support.hf_musicgen(stereo=True, seed=1)
    folder = support.save_musicgen(model, tok, tmp_path_factory.mktemp("tiny-musicgen-stereo"))
    return model, tok, folder


@pytest.fixture(scope="session")
def tiny_segue(tiny):
    from segue.models.loading.builder import load_model

    return load_model(str(tiny[2]))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo():
    """The built-in demo model (random weights from a fixed seed), loaded once."""
    from segue.models.loading.builder import load_model

    return load_model("demo")


@pytest.fixture(scope="session")
def tiny_melody(tmp_path_factory):
    """(transformers model, tokenizer, folder) for a tiny mono MusicGen-Melody (chroma_length 235)."""
    model, tok = melody_support.hf_musicgen_melody(seed=0)
    folder = support.save_musicgen(model, tok, tmp_path_factory.mktemp("tiny-musicgen-melody"))
    return model, tok, folder


@pytest.fixture(scope="session")
def tiny_melody_segue(tiny_melody):
    from segue.models.loading.builder import load_model

    return load_model(str(tiny_melody[2]))
