"""The empirical neural tangent kernel K = J Jᵀ of a scalar-output torch module on N inputs, in
full or restricted to a block of parameters (one layer's weights), without materializing J when
the architecture allows a closed form, and in per-sample Jacobian blocks when it does not.

Closed form (every chosen parameter belongs to an `nn.Linear` called once on (batch, features)
inputs): f depends on W only through y = W a + b, so ∂f/∂W = g aᵀ with g = ∂f/∂y, and the block of
K is (A Aᵀ) ∘ (G Gᵀ), its bias's G Gᵀ, where A holds the layer's inputs and G the gradients at its
outputs, one row per sample. One forward and one backward pass give both (samples do not interact
in eval mode, so the gradient of Σ f at a sample's row is that sample's own g).

Otherwise `torch.func` computes per-sample Jacobians chunk by chunk; K's block for two chunks is
J_i J_jᵀ, and a chunk's Jacobian is recomputed rather than kept when all of J exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from memeval.api import UsageError

JACOBIAN_BUDGET = 256 * 2**20  # bytes of Jacobian held at once by the fallback


@dataclass
class Gram:
    kernel: torch.Tensor  # (N, N), float64
    parameters: int       # parameters in the block
    method: str           # "closed-form" or "jacobian"


def select_parameters(model: nn.Module, block: str) -> dict[str, nn.Parameter]:
    """`full`: every trainable parameter; a module's name: its weight; a parameter's name: itself."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if block == "full":
        return named
    for name in (block, f"{block}.weight"):
        if name in named:
            return {name: named[name]}
    modules = sorted({n.rpartition(".")[0] for n in named if n.endswith(".weight")})
    raise UsageError(f"block {block!r}: the model has no such layer or parameter; expected 'full' or one of "
                     f"{', '.join(modules)}")


def ntk_gram(model: nn.Module, x: torch.Tensor, block: str = "full", budget: int = JACOBIAN_BUDGET,
             closed_form: bool = True) -> Gram:
    """The NTK Gram matrix of `model` (scalar output) on the rows of `x`, over `block`'s parameters."""
    model.eval()
    chosen = select_parameters(model, block)
    count = sum(p.numel() for p in chosen.values())
    owners = _linear_owners(model, chosen) if closed_form else None
    if owners is not None:
        kernel = _closed_form(model, x, chosen, owners)
        if kernel is not None:
            return Gram(kernel, count, "closed-form")
    return Gram(_jacobian_gram(model, x, chosen, budget), count, "jacobian")


def scalar_output(out: torch.Tensor, rows: int) -> torch.Tensor:
    if out.shape not in ((rows,), (rows, 1)):
        raise UsageError(f"the NTK here is of a scalar output: the model maps {rows} inputs to shape "
                         f"{tuple(out.shape)}; expected ({rows},) or ({rows}, 1)")
    return out.reshape(rows)


def _linear_owners(model: nn.Module, chosen: dict[str, nn.Parameter]) -> dict[str, tuple[str, str]] | None:
    """parameter name -> (module name, weight|bias) when every chosen parameter is a Linear's."""
    modules = dict(model.named_modules())
    owners = {}
    for name in chosen:
        module, _, leaf = name.rpartition(".")
        if not isinstance(modules.get(module), nn.Linear) or leaf not in ("weight", "bias"):
            return None
        owners[name] = (module, leaf)
    return owners


def _closed_form(model: nn.Module, x: torch.Tensor, chosen: dict[str, nn.Parameter],
                 owners: dict[str, tuple[str, str]]) -> torch.Tensor | None:
    """(A Aᵀ) ∘ (G Gᵀ) per weight, G Gᵀ per bias; None when a layer is not called exactly once on a
    2-D input (weight sharing, sequences), where the product form does not hold, or when its output
    is changed in place."""
    modules = dict(model.named_modules())
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m, _ in owners.values()}
    outputs: dict[str, list[tuple[torch.Tensor, int]]] = {m: [] for m, _ in owners.values()}

    def hook(name: str):
        def capture(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            inputs[name].append(args[0].detach())
            output.retain_grad()
            outputs[name].append((output, output._version))
        return capture

    handles = [modules[m].register_forward_hook(hook(m)) for m in inputs]
    try:
        with torch.enable_grad():
            scalar_output(model(x), x.shape[0]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    if any(len(v) != 1 or v[0].dim() != 2 for v in inputs.values()):
        return None
    # An in-place op after the layer (ReLU(inplace=True)) leaves no gradient at its true output.
    captured = [calls[0] for calls in outputs.values()]
    if any(out._version != version or out.grad is None for out, version in captured):
        return None
    kernel = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
    for module, leaf in owners.values():
        grad = outputs[module][0][0].grad.to(torch.float64)
        grad_gram = grad @ grad.T
        if leaf == "weight":
            a = inputs[module][0].to(torch.float64)
            kernel += (a @ a.T) * grad_gram
        else:
            kernel += grad_gram
    return kernel


def _jacobian_gram(model: nn.Module, x: torch.Tensor, chosen: dict[str, nn.Parameter], budget: int) -> torch.Tensor:
    from torch.func import functional_call, jacrev, vmap

    fixed = {n: p.detach() for n, p in model.named_parameters()}
    fixed.update({n: b.detach() for n, b in model.named_buffers()})
    variable = {n: p.detach() for n, p in chosen.items()}

    def f(params: dict[str, torch.Tensor], one: torch.Tensor) -> torch.Tensor:
        return scalar_output(functional_call(model, {**fixed, **params}, (one.unsqueeze(0),)), 1)[0]

    per_sample = vmap(jacrev(f), in_dims=(None, 0))

    def jacobian(rows: slice) -> torch.Tensor:
        parts = per_sample(variable, x[rows])
        return torch.cat([parts[n].reshape(parts[n].shape[0], -1) for n in variable], dim=1).to(torch.float64)

    n = x.shape[0]
    count = sum(p.numel() for p in variable.values())
    rows = max(1, budget // (8 * count * 2))  # two chunks are held at once
    chunks = list(_chunks(n, rows))
    kernel = torch.zeros(n, n, dtype=torch.float64)
    if len(chunks) == 1:
        j = jacobian(chunks[0])
        return j @ j.T
    for i, first in enumerate(chunks):
        ji = jacobian(first)
        for second in chunks[i:]:
            jj = ji if second == first else jacobian(second)
            product = ji @ jj.T
            kernel[first, second] = product
            kernel[second, first] = product.T
    return kernel


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
