"""The fused ops as ``torch.library`` custom ops: ``torch.compile`` keeps them inside its graph.

``torch.compile`` cannot trace into a ``torch.autograd.Function`` whose forward launches Triton
kernels through a launcher (autotuning, host-side shape logic; under the interpreter, Python
that runs the kernel): every call would break the graph, several times per layer. Registered
as custom ops, the kernels are opaque calls with a known output shape, and a model compiled
whole keeps one graph across its connections.

:func:`registered` turns an existing ``autograd.Function`` into such an op without changing its
code: a class decorator, so each kernel file keeps its readable Function and only gains one
line. Two generic ops carry every Function:

* ``hclib::fused(tensors, key) -> results`` runs ``Function.forward`` with a stand-in ``ctx``
  and returns its outputs and the tensors it saved for the backward (those that are not inputs
  or outputs already: a custom op may not return an alias of its inputs);
* ``hclib::fused_backward(tensors, results, grads, key) -> grads`` rebuilds that ``ctx`` and
  runs ``Function.backward``,

tied together by ``register_autograd``. ``key`` names the Function and its non-tensor arguments
(floats, ints, configs), kept in a table on the Python side. The fake versions (the shapes
``torch.compile`` traces with) are the same code: the launchers allocate their outputs and
launch nothing on fake tensors (:func:`hclib.kernels.dispatch.fake`). An output that is an
input itself (the state routed through a read-out, ``H_pass``) is rebuilt outside the op as a
view of that input.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["registered"]

#: the registered Functions, by index
_FUNCTIONS: list[type] = []
#: key -> (Function, the forward's arguments with the tensors replaced by their index)
_CALLS: list[tuple[type, tuple]] = []
_KEYS: dict[tuple, int] = {}
#: (key, dtypes of the tensors) -> how the forward's outputs and saved tensors map onto the
#: op's results, and the attributes the forward set on ctx
_LAYOUTS: dict[tuple, dict[str, Any]] = {}


class _Ctx:
    """What a Function's forward and backward use of autograd's ``ctx``."""

    def __init__(self, saved: Sequence[torch.Tensor | None] = (), **attributes: Any) -> None:
        self._saved = tuple(saved)
        self._materialize = True
        self.__dict__.update(attributes)

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None:
        self._saved = tensors

    @property
    def saved_tensors(self) -> tuple:
        return self._saved

    def set_materialize_grads(self, value: bool) -> None:
        self._materialize = value

    def mark_non_differentiable(self, *tensors: torch.Tensor) -> None:
        pass

    def attributes(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@torch._dynamo.assume_constant_result  # run while tracing, not traced: the table must be filled
def _key(index: int, template: tuple) -> int:
    entry = (_FUNCTIONS[index], template)
    if entry not in _KEYS:
        _KEYS[entry] = len(_CALLS)
        _CALLS.append(entry)
    return _KEYS[entry]


def _signature(key: int, tensors: Sequence[torch.Tensor | None]) -> tuple:
    return (int(key), tuple(None if t is None else (t.dtype, t.dim()) for t in tensors))


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """``a`` is ``b`` or a view of all of it (same storage, shape, strides and offset)."""
    if b is None:
        return False
    if a is b:
        return True
    return (
        torch._C._is_alias_of(a, b)
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.storage_offset() == b.storage_offset()
    )


def _arguments(key: int, tensors: Sequence[torch.Tensor | None]) -> list:
    _, template = _CALLS[int(key)]
    return [tensors[i] if kind == "tensor" else i for kind, i in template]


def _forward(tensors: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    function, _ = _CALLS[int(key)]
    ctx = _Ctx()
    outs = function.forward(ctx, *_arguments(key, tensors))
    single = not isinstance(outs, tuple)
    outs = (outs,) if single else outs
    results: list[torch.Tensor] = []
    out_map, saved_map = [], []
    for out in outs:
        i = next((i for i, t in enumerate(tensors) if _same(out, t)), None)
        if i is not None:
            out_map.append(("input", i))
        else:
            out_map.append(("result", len(results)))
            results.append(out)
    for saved in ctx.saved_tensors:
        if saved is None:
            saved_map.append(("none", 0))
            continue
        i = next((i for i, t in enumerate(tensors) if _same(saved, t)), None)
        j = next((j for j, r in enumerate(results) if saved is r), None)
        if i is not None:
            saved_map.append(("input", i))
        elif j is not None:
            saved_map.append(("result", j))
        else:
            saved_map.append(("result", len(results)))
            results.append(saved)
    _LAYOUTS[_signature(key, tensors)] = {
        "outputs": out_map,
        "saved": saved_map,
        "single": single,
        "materialize": ctx._materialize,
        "attributes": ctx.attributes(),
    }
    for k, r in enumerate(results):  # a custom op returns new tensors only
        if any(torch._C._is_alias_of(r, x) for x in (*tensors, *results[:k])):
            results[k] = r.clone()
    return results


def _backward(
    tensors: list[torch.Tensor],
    results: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    key: int,
) -> list[torch.Tensor]:
    function, _ = _CALLS[int(key)]
    layout = _LAYOUTS[_signature(key, tensors)]
    pick = {"input": lambda i: tensors[i], "result": lambda j: results[j], "none": lambda _: None}
    saved = [pick[kind](i) for kind, i in layout["saved"]]
    ctx = _Ctx(saved, **layout["attributes"])
    got = function.backward(ctx, *grads)
    got = got if isinstance(got, tuple) else (got,)
    template = _CALLS[int(key)][1]
    out: list[torch.Tensor] = []
    inputs = [x for x in (*tensors, *results, *grads) if x is not None]
    for argument, grad in zip(template, got, strict=False):
        if argument[0] == "tensor":
            if grad is None:
                grad = torch.zeros_like(tensors[argument[1]])
            elif any(torch._C._is_alias_of(grad, x) for x in (*inputs, *out)):
                grad = grad.clone()  # a custom op returns new tensors only
            out.append(grad)
    return out


_fused = torch.library.custom_op("hclib::fused", _forward, mutates_args=())
_fused.register_fake(_forward)
_fused_backward = torch.library.custom_op("hclib::fused_backward", _backward, mutates_args=())
_fused_backward.register_fake(_backward)


def _setup_context(ctx, inputs, output) -> None:
    tensors, key = inputs
    ctx.key = key
    ctx.count = len(tensors)
    ctx.save_for_backward(*tensors, *output)


def _autograd(ctx, grads):
    saved = ctx.saved_tensors
    tensors, results = list(saved[: ctx.count]), list(saved[ctx.count :])
    layout = _LAYOUTS[_signature(ctx.key, tensors)]
    out_grads = []
    for kind, j in layout["outputs"]:
        g = grads[j] if kind == "result" else None  # an input routed through: autograd's
        if g is None and layout["materialize"]:
            g = torch.zeros_like(results[j] if kind == "result" else tensors[j])
        out_grads.append(g)
    return _fused_backward(tensors, results, out_grads, ctx.key), None


_fused.register_autograd(_autograd, setup_context=_setup_context)


def _apply(index: int, *args: Any):
    tensors, template = [], []
    for a in args:
        if isinstance(a, torch.Tensor):  # (a None stays a value: autograd skips Tensor?[] lists)
            template.append(("tensor", len(tensors)))
            tensors.append(a)
        else:
            template.append(("value", a))
    key = _key(index, tuple(template))
    results = _fused(tensors, key)
    outputs, single = _output_layout(_signature(key, tensors))
    outs = [
        results[i] if kind == "result" else tensors[i].view_as(tensors[i]) for kind, i in outputs
    ]
    return outs[0] if single else tuple(outs)


@torch._dynamo.assume_constant_result  # read while tracing: the op's fake run just wrote it
def _output_layout(signature: tuple) -> tuple[tuple, bool]:
    layout = _LAYOUTS[signature]
    return tuple(layout["outputs"]), layout["single"]


class _Registered:
    """A Function's stand-in: ``.apply`` runs the Function eagerly and the registered op while
    ``torch.compile`` traces (Dynamo would otherwise trace the Function's forward, kernels and
    all); every other attribute is the Function's."""

    def __init__(self, function: type) -> None:
        self.function = function
        self.index = len(_FUNCTIONS)
        _FUNCTIONS.append(function)

    def apply(self, *args: Any):
        if torch.compiler.is_compiling():
            return _apply(self.index, *args)
        return self.function.apply(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.function, name)

    def __repr__(self) -> str:
        return f"registered({self.function.__qualname__})"


def registered(function: type) -> _Registered:
    """Class decorator of a kernel's ``torch.autograd.Function``: under ``torch.compile`` its
    ``apply`` runs through the registered ops ``hclib::fused`` / ``hclib::fused_backward``
    (see above); eagerly, the Function itself."""
    return _Registered(function)
