"""Model references -> local folders: a folder as is, or a Hugging Face hub id fetched into the usual cache.

Only the files segue reads are downloaded (configs, tokenizer, one set of weights), with the hub's progress bars.
Offline mode (HF_HUB_OFFLINE=1) is honoured by huggingface_hub itself; a miss becomes a sentence saying so.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from segue.models.errors import ModelFileError, ModelNotFoundError, OfflineError

META = ["*.json", "*.model", "*.txt"]  # configs, tokenizer (spiece.model, tokenizer.json), no weights

_WEIGHT_CHOICES = (  # in order of preference
    ["model.safetensors"],
    ["model.safetensors.index.json", "model-*.safetensors"],
    ["pytorch_model.bin"],
    ["pytorch_model.bin.index.json", "pytorch_model-*.bin"],
    ["state_dict.bin", "compression_state_dict.bin"],  # audiocraft export
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def choose_weights(files: list[str], where: str = "the model") -> list[str]:
    """The allow-patterns of the preferred weight set among `files` (a repo listing)."""
    for patterns in _WEIGHT_CHOICES:
        if fnmatch.filter(files, patterns[0]):
            return patterns
    raise ModelFileError(f"{where} has no weights (looked for {', '.join(p[0] for p in _WEIGHT_CHOICES)}); "
                         "is it a MusicGen, AudioGen or EnCodec repo?")


def _download(repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise ModelNotFoundError(f"{repo_id} is gated on the hub; accept its licence online and log in with "
                                 "`hf auth login`") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(f"no model {repo_id!r} on the Hugging Face hub; check the id (for example "
                                 "facebook/musicgen-small), or pass a local folder or 'demo'") from exc
    except HFValidationError as exc:
        raise ModelNotFoundError(f"{repo_id!r} is not a folder, not 'demo', and not a valid hub id "
                                 "(owner/name)") from exc
    except LocalEntryNotFoundError as exc:
        if _offline():
            raise OfflineError(f"offline mode is on (HF_HUB_OFFLINE) and {repo_id} is not in the local cache; "
                               "run once online to download it, or pass a local folder") from exc
        raise OfflineError(f"cannot reach the Hugging Face hub and {repo_id} is not in the local cache; check the "
                           "network, or pass a local folder") from exc


def _listing(repo_id: str, cached: Path) -> list[str]:
    if not _offline():
        from huggingface_hub import HfApi

        try:
            return HfApi().list_repo_files(repo_id)
        except Exception:  # noqa: BLE001 - any failure to list (no network, hub down): use what the cache holds
            pass
    return [str(p.relative_to(cached)) for p in cached.rglob("*") if p.is_file()]


def fetch(ref: str) -> Path:
    """A local folder holding the model `ref` (a folder path or a hub id), downloading what is missing."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{ref} is a file; --model takes a folder, a hub id or 'demo'")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelNotFoundError(f"no folder {ref}; check the path (or use a hub id such as facebook/musicgen-small)")
    return fetch_hub(ref)


def fetch_hub(ref: str) -> Path:
    """The hub repository `ref` (owner/name) in the local cache, downloading what is missing. Never a local folder
    of that name: the daemon's `set model=` takes hub ids from clients, and a folder named like one in the daemon's
    working directory is not theirs to load."""
    meta = _download(ref, META)
    weights = choose_weights(_listing(ref, meta), ref)
    return _download(ref, META + weights)
