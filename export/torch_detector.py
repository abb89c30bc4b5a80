"""The eager PyTorch serving graph as an in-process detector: the parity reference.

The same callable as :mod:`cxr.serving.runtime`'s: ``[B, C, S, S]`` float32 -> (boxes,
scores, labels, valid).  AVX512-BF16 / AMX-BF16 matrix units are used only for
channels-last bf16 convolutions, so ``bf16`` casts the weights and switches the layout,
while ``autocast`` is PyTorch's plain autocast, kept to show the difference.
"""

from __future__ import annotations

import numpy as np

from cxr.errors import InvalidOptionError
from cxr.serving.steps import RawOutput

TORCH_MODES = ("fp32", "bf16", "autocast")  # bf16: channels-last bf16 network; autocast: torch.autocast(bfloat16)


class TorchDetector:
    """The eager PyTorch serving graph as the same callable (the parity reference in ``fp32``).

    mode ``bf16``: the backbone, FPN, RPN head and box head hold bfloat16 weights in
    channels-last layout and take bfloat16 inputs (what oneDNN runs on AVX512-BF16 /
    AMX tiles); anchors, NMS, ROI Align and box decoding stay float32 -- their outputs
    are cast back at the module boundaries.  ``autocast``: ``torch.autocast("cpu",
    torch.bfloat16)`` around the whole graph (NCHW; measured to gain little, kept as a row).
    """

    def __init__(self, ckpt, *, mode: str = "fp32") -> None:
        import torch

        from cxr.export.graph import ServingGraph

        if mode not in TORCH_MODES:
            raise InvalidOptionError(f"unknown PyTorch mode {mode!r}; choose one of: {', '.join(TORCH_MODES)}")
        self._torch = torch
        self.mode = mode
        self.graph = ServingGraph.from_checkpoint(ckpt)
        if mode == "bf16":
            for name in ("backbone", "rpn_head"):
                setattr(self.graph, name, _Bf16(getattr(self.graph, name)))
            self.graph.roi_heads.box_head = _Bf16(self.graph.roi_heads.box_head)

    def __call__(self, batch: np.ndarray) -> RawOutput:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode == "autocast"):
            out = self.graph(x)
        return tuple(t.float().numpy() if t.is_floating_point() else t.numpy() for t in out)  # type: ignore[return-value]


def _Bf16(module):
    """``module`` in bfloat16 / channels-last, float32 in and out (built lazily: torch is imported here)."""
    import torch
    from torch import nn

    class Bf16(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner.to(dtype=torch.bfloat16, memory_format=torch.channels_last)

        def forward(self, x):
            def cast_in(t):
                if isinstance(t, (list, tuple)):
                    return type(t)(cast_in(v) for v in t)
                return t.to(torch.bfloat16, memory_format=torch.channels_last) if t.dim() == 4 else t.to(torch.bfloat16)

            return _to_float(self.inner(cast_in(x)))

    return Bf16(module)


def _to_float(out):
    if isinstance(out, dict):
        return type(out)((k, _to_float(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(v) for v in out)
    return out.float().contiguous() if out.is_floating_point() else out
