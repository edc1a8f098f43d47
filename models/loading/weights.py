"""Reading tensors out of checkpoint files, and folding weight norm into plain weights."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable

import torch

from segue.models.errors import ModelFileError


def _load_torch_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}); "
                             "delete it and download the model again") from exc


Convert = Callable[[str, torch.Tensor], torch.Tensor]


def _keep(key: str, value: torch.Tensor) -> torch.Tensor:
    return value


def _read_safetensors(path: Path, prefix: str, convert: Convert) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = convert(key, f.get_tensor(key))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file ({exc}); delete it and download the model "
                             "again") from exc
    return out


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers-format folder, shards resolved through their index."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        single_path = folder / single
        if single_path.exists():
            return [single_path]
        index = folder / index_name
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelFileError(f"{index} is not a valid shard index; download the model again") from exc
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise ModelFileError(f"{folder} is missing weight shards {missing}; download the model again")
            return [folder / s for s in shards]
    raise ModelFileError(f"no weights in {folder} (expected model.safetensors or pytorch_model.bin); "
                         "download the model again")


def read_state_dict(folder: Path, prefix: str = "", convert: Convert = _keep) -> dict[str, torch.Tensor]:
    """All tensors whose key starts with `prefix` (prefix stripped), from safetensors or .bin, sharded or not.

    `convert(key, tensor)` is applied as each tensor is read (a dtype cast, say), so a float32 checkpoint loaded
    in bfloat16 never sits in memory twice.
    """
    out: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            out.update(_read_safetensors(path, prefix, convert))
        else:
            sd = _load_torch_file(path)
            for k in [k for k in sd if k.startswith(prefix)]:
                out[k[len(prefix):]] = convert(k, sd.pop(k))
    return out


def read_torch_package(path: Path) -> dict:
    """An audiocraft `*.bin` package: a dict with 'best_state' and 'xp.cfg' (or a 'pretrained' pointer)."""
    if not path.exists():
        raise ModelFileError(f"{path} is missing; download the model again")
    pkg = _load_torch_file(path)
    if not isinstance(pkg, dict):
        raise ModelFileError(f"{path} does not hold an audiocraft package (got {type(pkg).__name__})")
    return pkg


_WN_PAIRS = (
    (re.compile(r"^(.*)\.weight_g$"), ".weight_g", ".weight_v"),
    (re.compile(r"^(.*)\.parametrizations\.weight\.original0$"), ".parametrizations.weight.original0",
     ".parametrizations.weight.original1"),
)


def fold_weight_norms(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (g, v) weight-norm pair, old (`weight_g/_v`) or new (`parametrizations`) style, by `.weight`."""
    out = {}
    consumed = set()
    for key, value in sd.items():
        for pattern, _, v_suffix in _WN_PAIRS:
            m = pattern.match(key)
            if m:
                base = m.group(1)
                v_key = base + v_suffix
                if v_key not in sd:
                    raise ModelFileError(f"checkpoint has {key} but not {v_key}; the file is incomplete")
                out[base + ".weight"] = torch._weight_norm(sd[v_key].float(), value.float(), 0)
                consumed.update((key, v_key))
    for key, value in sd.items():
        if key not in consumed and not key.endswith(("weight_v", "parametrizations.weight.original1")):
            out[key] = value
    return out
