"""``tinystories.kernels`` imports and falls back to the reference path when Triton is not installed."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap


def test_imports_and_falls_back_without_triton():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError, as on a machine without it
        import torch
        from tinystories.kernels import (FusedAttention, FusedLayerNorm, FusedMLP, LinearCrossEntropy, attention,
                                         fused_mlp, kernels_available, layer_norm, linear_cross_entropy, reference)
        ok, reason = kernels_available()
        assert not ok and "triton is not installed" in reason, reason
        q = torch.randn(1, 2, 5, 4)
        assert torch.equal(attention(q, q, q, window=2), reference.attention(q, q, q, window=2))
        x, w = torch.randn(3, 8), torch.randn(8)
        assert torch.equal(layer_norm(x, w, None), reference.layer_norm(x, w, None))
        fc, proj = torch.randn(16, 8), torch.randn(8, 16)
        assert torch.equal(fused_mlp(x, fc, None, proj, None), reference.fused_mlp(x, fc, None, proj, None))
        t = torch.tensor([1, -100, 3])
        assert torch.equal(linear_cross_entropy(x, fc, t), reference.linear_cross_entropy(x, fc, t))
        print("fallback ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()
    )  # the installed package, not a source tree in the folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fallback ok" in proc.stdout
    assert "falls back to the plain PyTorch reference: triton is not installed" in proc.stderr
