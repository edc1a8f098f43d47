"""Int8 weights for the LM's projections on a CPU: PyTorch's fbgemm dynamic quantized linear.

Each projection's weight [out, in] is quantized once, at load, from the float checkpoint: symmetric int8 with one
scale per output channel. At every step the activations are quantized per tensor on the fly (7-bit, fbgemm's
`reduce_range`, which keeps its int16 pair sums from saturating), multiplied in int8 with int32 accumulation, and
rescaled to float32.

Why this path (AMD EPYC, 2 cores, torch 2.13, one thread; a 4096 x 1024 matrix at CFG batch 2, ms per product):
float32 `mm` 0.8-1.7, fbgemm `quantized::linear_dynamic` 0.09, `aten._weight_int8pack_mm` 7.0 with float32
activations and 0.30 with bfloat16 ones, torchao 0.18 `Int8WeightOnlyConfig` 1.17 and
`Int8DynamicActivationInt8WeightConfig` 1.9 (its CPU kernels are not the fast ones here). PyTorch marks quantized
tensors deprecated in favour of torchao: they are touched only here, at load, with that warning silenced.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)


class Int8Linear:
    """y = x @ W.T for a float weight W [out, in], with W held as per-output-channel int8 (fbgemm's packed form).

    Call with x [M, in] float32 -> [M, out] float32. CPU only (x86 with fbgemm)."""

    __slots__ = ("packed", "out_features", "in_features")

    def __init__(self, weight: torch.Tensor):
        w = weight.detach().to(device="cpu", dtype=torch.float32)  # [out, in]
        self.out_features, self.in_features = w.shape
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # [out]
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "quantized tensors are deprecated" (see above)
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)  # [M, out]

    @property
    def nbytes(self) -> int:
        return self.out_features * self.in_features + 8 * self.out_features


INT8_MARGIN = 1.2  # `--dtype auto` takes int8 when a step is at least this much faster than float32's
# Below this much projection weight (float32 bytes) `auto` keeps float32 without measuring: the weights sit in the
# CPU's caches, and fbgemm's per-call quantization of the activations costs more than int8 saves (the demo model,
# 3 MB: 0.86 ms float32, 1.08 ms int8). Measuring there would only let a busy moment pick int8 by chance.
AUTO_MIN_BYTES = 32 * 2**20


def int8_is_faster(lm, timer: Callable[[object], float] | None = None, cache: Path | None = None,
                   min_bytes: int = AUTO_MIN_BYTES) -> bool:
    """Quantize `lm` (a float32 LM on the CPU) and keep int8 if its step is at least INT8_MARGIN times faster than
    float32's; else drop the int8 weights again. Returns whether int8 was kept.

    The choice is measured once per machine and kept: the same command must give the same take with the same seed,
    and int8's tokens are not float32's. `cache`: a JSON file of earlier choices, keyed by the LM's shapes, the
    CPU, the thread count and the PyTorch version (None: measure every time). An LM with less than `min_bytes` of
    projection weights stays float32 unmeasured (see AUTO_MIN_BYTES).

    Measured on a 2-core AMD EPYC: musicgen-small's shapes step 152 ms in float32 and 29 ms in int8.
    `timer(lm)`: ms per step (default: `step_ms`, the median of a few CFG steps)."""
    if _projection_bytes(lm) < min_bytes:
        return False
    key = _machine_key(lm)
    known = _read_choices(cache).get(key) if cache is not None else None
    if known is not None:
        if known["int8"]:
            lm.quantize_int8()
        return bool(known["int8"])
    timer = timer or step_ms
    plain = timer(lm)
    lm.quantize_int8()
    quantized = timer(lm)
    keep = quantized * INT8_MARGIN <= plain
    if not keep:
        lm.drop_int8()
    if cache is not None:
        _remember(cache, key, dict(int8=keep, float32_ms=round(plain, 3), int8_ms=round(quantized, 3),
                                   measured=time.strftime("%Y-%m-%dT%H:%M:%S")))
    return keep


def auto_cache_path() -> Path:
    """Where `--dtype auto` keeps its measured choices: $SEGUE_CACHE_DIR, else $XDG_CACHE_HOME/segue, else
    ~/.cache/segue; the file `dtype_auto.json`. Delete it to measure again."""
    root = os.environ.get("SEGUE_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "segue")
    return Path(root) / "dtype_auto.json"


def _projection_bytes(lm) -> int:
    return sum(p.numel() * 4 for name, p in lm.named_parameters() if p.dim() == 2 and "emb" not in name)


def _machine_key(lm) -> str:
    c = lm.cfg
    shape = f"dim{c.dim}-layers{c.num_layers}-ffn{c.ffn_dim}-q{c.n_q}-card{c.card}-x{int(c.cross_attention)}"
    return f"{shape}|{_cpu_name()}|threads{torch.get_num_threads()}|torch{torch.__version__}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_choices(cache: Path) -> dict:
    """The file's choices; anything but a regular file of well-formed choices counts as empty (a FIFO is never
    opened: it would block the load; a damaged file is rewritten after measuring)."""
    try:
        if not cache.is_file():
            return {}
        choices = json.loads(cache.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON (or not UTF-8), or nested past Python's limit
        return {}
    if not isinstance(choices, dict):
        return {}
    return {k: v for k, v in choices.items() if isinstance(v, dict) and isinstance(v.get("int8"), bool)}


def _remember(cache: Path, key: str, choice: dict) -> None:
    """Add one choice, written whole to a temporary file and renamed: a reader never sees half a file. Where it
    cannot be kept, the user is told: `auto` then measures again at every load, and may choose differently."""
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        choices = _read_choices(cache)
        choices[key] = choice
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
        os.replace(tmp, cache)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        log.warning("dtype auto chose %s but cannot keep that choice in %s (%s): it is measured again at every "
                    "load and the same seed may then give another take; set SEGUE_CACHE_DIR to a writable folder, or "
                    "pass --dtype %s", "int8" if choice["int8"] else "float32", cache, exc.strerror or exc,
                    "int8" if choice["int8"] else "float32")


def scratch_state(lm, position: int, steps: int):
    """A CFG state of two rows holding `position` positions of context and room for `steps` more, and the tokens
    [2, K, 1] to step it with: what timing a step needs (what the cache holds does not change the time; no text:
    the cross-attention's cost does not depend on the dtype or the context)."""
    from segue.models.lm.state import LMState

    cfg = lm.cfg
    state = LMState.allocate(cfg, 2, position + steps + 1, 1, lm.device, lm.dtype)
    if cfg.cross_attention:
        shape = (cfg.num_layers, 2, cfg.num_heads, 1, cfg.head_dim)
        zeros = torch.zeros(shape, device=lm.device, dtype=lm.dtype)
        state.set_condition(zeros, zeros.clone(), torch.ones(2, 1, dtype=torch.bool, device=lm.device))
    state.advance(position)
    return state, torch.zeros(2, cfg.n_q, 1, dtype=torch.long, device=lm.device)


def step_ms(lm, position: int = 0, warm: int = 2, timed: int = 7) -> float:
    """Median ms of one step of CFG's two rows from `position` positions of context, on a `scratch_state`. Used to
    choose int8 (`int8_is_faster`) and to measure how a step slows with its context (daemon/model_slot.py)."""
    state, tokens = scratch_state(lm, position, warm + timed)
    cuda = lm.device.type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warm + timed):
            if cuda:
                torch.cuda.synchronize(lm.device)
            t = time.perf_counter()
            lm(tokens, state)
            if cuda:
                torch.cuda.synchronize(lm.device)
            if i >= warm:
                times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def int8_supported() -> bool:
    """Whether this PyTorch build has fbgemm's dynamic quantized linear (x86 CPU builds do)."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))
