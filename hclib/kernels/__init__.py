"""Fused Triton kernels for the connections, and the ``impl`` switch that picks them.

Each fused op lives in its own file, layered as in Triton's layer-norm tutorial and
Liger-Kernel: ``@triton.jit`` kernel -> launcher (shapes, strides, block sizes) ->
``torch.autograd.Function`` -> the connection modules, which call it when ``impl`` resolves
to ``"triton"``:

* :mod:`hclib.kernels.post_res`: write-in and mixing ``H' = res @ H + post (x) y``, shared by
  HC, FC and mHC;
* :mod:`hclib.kernels.hyper_pre`: HC's read-out ``h0 = A_m^T H`` with the dynamic weights
  (norm, projection, tanh, scale) fused into the same pass over ``H``;
* :mod:`hclib.kernels.frac`: FC's split / mix / merge, the same two kernels on fractions;
* :mod:`hclib.kernels.sinkhorn`: Sinkhorn-Knopp on its own (mHC Eq. 9), a registered
  ``torch.library`` op;
* :mod:`hclib.kernels.ops`: the Functions as ``torch.library`` ops while ``torch.compile``
  traces (a model compiled whole keeps one graph across its connections);
* :mod:`hclib.kernels.dispatch`: :func:`resolve_impl`, which decides per call
  (:func:`auto_impl`: the kernels only on NVIDIA GPUs of compute capability >= 9.0, for
  float32 and bfloat16 states), and the launch guard (the tensor's CUDA device).

The pure-PyTorch modules (:class:`hclib.HyperConnection`, ...) stay the single oracle: the
kernels are tested against them, forward and every gradient. Importing this package does not
import triton; the kernel files are imported on first use.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from hclib.kernels.dispatch import (
    IMPLS,
    auto_impl,
    check_impl,
    compiled,
    resolve_impl,
    triton_available,
)

__all__ = ["IMPLS", "auto_impl", "check_impl", "compiled", "resolve_impl", "triton_available"]
