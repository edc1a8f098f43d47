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

import statistics
import time
import warnings
from typing import Callable

import torch


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


def int8_is_faster(lm, step_ms: Callable[[object], float] | None = None) -> bool:
    """Quantize `lm` (a float32 LM on the CPU) and keep int8 if its step is at least INT8_MARGIN times faster than
    float32's, measured here and now; else drop the int8 weights again. Returns whether int8 was kept.

    Measured on a 2-core AMD EPYC: musicgen-small's shapes step 152 ms in float32 and 29 ms in int8; the tiny demo
    model 0.86 ms and 1.08 ms (at that size fbgemm's per-call quantization costs more than the weights' reads).
    `step_ms(lm)`: the timer (default: the median of a few CFG steps)."""
    step_ms = step_ms or _step_ms
    plain = step_ms(lm)
    lm.quantize_int8()
    if step_ms(lm) * INT8_MARGIN <= plain:
        return True
    lm.drop_int8()
    return False


def _step_ms(lm, warm: int = 2, timed: int = 7) -> float:
    """Median ms of one step of CFG's two rows over a short cache (no text: the cross-attention's cost is the same
    at either precision)."""
    from segue.models.lm.state import LMState

    cfg = lm.cfg
    state = LMState.allocate(cfg, 2, warm + timed + 1, 1, lm.device, lm.dtype)
    if cfg.cross_attention:
        shape = (cfg.num_layers, 2, cfg.num_heads, 1, cfg.head_dim)
        state.set_condition(torch.zeros(shape), torch.zeros(shape), torch.ones(2, 1, dtype=torch.bool))
    tokens = torch.zeros(2, cfg.n_q, 1, dtype=torch.long)
    times = []
    for i in range(warm + timed):
        t = time.perf_counter()
        lm(tokens, state)
        if i >= warm:
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def int8_supported() -> bool:
    """Whether this PyTorch build has fbgemm's dynamic quantized linear (x86 CPU builds do)."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))
