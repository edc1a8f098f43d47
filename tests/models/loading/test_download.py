"""Hub ids through huggingface_hub's real client against a local stand-in for the hub (HF_ENDPOINT)."""

import os
import shutil
import subprocess
import sys

import soundfile as sf

from hub_server import HubServer


def segue(*args, env):
    return subprocess.run([sys.executable, "-m", "segue.daemon.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_download_only_what_is_read_then_reuse_offline(tiny, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny[2], repo)
    (repo / "pytorch_model.bin").write_bytes(b"a second copy of the weights: never downloaded")
    (repo / "state_dict.bin").write_bytes(b"the audiocraft export: never downloaded")
    (repo / "README.md").write_text("model card")
    cache = tmp_path / "cache"
    online = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1"}
    with HubServer({"acme/served": repo}) as hub:
        online["HF_ENDPOINT"] = hub.url
        r = segue("generate", "--model", "acme/served", "--prompt", "x", "--duration", "0.5", "--out",
                  tmp_path / "a.wav", env=online)
        assert r.returncode == 0, r.stderr
        assert hub.downloaded() == sorted(["config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer.json", "tokenizer_config.json"])
        r = segue("generate", "--model", "acme/nope", "--out", tmp_path / "b.wav", env=online)
        assert r.returncode == 2
        assert r.stderr.strip() == ("segue: error: no model 'acme/nope' on the Hugging Face hub; check the id (for "
                                    "example facebook/musicgen-small), or pass a local folder or 'demo'")
    assert (cache / "models--acme--served" / "snapshots").is_dir()  # the usual cache layout
    offline = {**online, "HF_HUB_OFFLINE": "1"}  # the hub is gone: the cache alone serves the model
    r = segue("generate", "--model", "acme/served", "--prompt", "x", "--duration", "0.5", "--out", tmp_path / "c.wav",
              env=offline)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "c.wav")).frames == sf.info(str(tmp_path / "a.wav")).frames == 16000


def test_hub_down_and_nothing_cached(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    r = segue("generate", "--model", "acme/any", "--out", tmp_path / "a.wav", env=env)
    assert r.returncode == 2
    assert "cannot reach the Hugging Face hub and acme/any is not in the local cache" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
