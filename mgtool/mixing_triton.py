"""Weight generation as two fused Triton kernels per bank group (``--mixing-kernel triton``).

The same maths as ``mgtool.mixing.mix_group``, at the memory-bandwidth limit:

* forward, one kernel: every program reads a block of the row's ``K`` templates once and writes
  that block of all ``L*cols`` tiles it makes, ``W_l[tile(r, c)] = sum_k C_l[r, c, k] T[r, k]``, in
  the output's own layout (the qkv row interleave and channels_last are address arithmetic,
  not copies);
* backward, one kernel: every program reads the block of each incoming weight gradient and of
  the templates once and writes the templates' gradient ``dT[r, k] = sum_(l,c) C_l[r,c,k] G_l[tile]``
  and its partial sums of the coefficient gradient ``dC_l[r, c, k] = sum G_l[tile] T[r, k]``,
  which one ``sum`` over blocks finishes (a fixed order: bitwise repeatable, no atomics).

Accumulation is fp32. Under autocast the weights are written in the autocast dtype (the value
the layer's own autocast cast of an fp32 weight would give, without the cast kernel, and the
gradient arrives in that dtype). Launches need no host-device synchronisation and take their
shapes from the group's ``MixShape``; ``torch.compile`` traces the kernels as user-defined
Triton kernels. Importing this module needs ``triton``; ``unavailable`` says why the kernels do
not run on a device (None when they do). Run on the CPU with ``TRITON_INTERPRET=1`` set before this module is imported
(the tests do).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from mgtool.mixing import MixShape, mix_group, row_templates

BLOCK = 1024  # tile values per program; fewer when a program holds many rows of values


@triton.jit
def _tile_address(n, R, IN_T, OUT_T, r, c, s0, s1, sr, ROWS: tl.constexpr, PARTS: tl.constexpr):
    """Offset of tile value ``n`` (flat ``(out_t, in_t, rest)`` index) of tile ``(r, c)`` in a
    weight with strides ``(s0, s1, sr)`` (``rest`` collapsed to one stride)."""
    oo = n // (IN_T * R)
    ii = (n // R) % IN_T
    rr = n % R
    if PARTS > 1:  # [q_0 k_0 v_0 | q_1 k_1 v_1] -> [q_0 q_1 | k_0 k_1 | v_0 v_1]
        q = OUT_T // PARTS
        row = (oo // q) * (ROWS * q) + r * q + oo % q
    else:
        row = r * OUT_T + oo
    return row * s0 + (c * IN_T + ii) * s1 + rr * sr


@triton.jit
def _write_tile(C, W, t, at, k, inside, r, c, COLS: tl.constexpr, K: tl.constexpr):
    a = tl.load(C + (r * COLS + c) * K + k, mask=k < K, other=0.0).to(tl.float32)
    tl.store(W + at, tl.sum(a[:, None] * t, axis=0).to(W.dtype.element_ty), mask=inside)


@triton.jit
def _mix_forward(T, C0, C1, C2, C3, W0, W1, W2, W3, N, R, IN_T, OUT_T, st_r, st_k, s0, s1, sr,
                 ROWS: tl.constexpr, COLS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                 LAYERS: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr):
    r = tl.program_id(1)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = n < N
    k = tl.arange(0, KP)
    t = tl.load(T + r * st_r + k[:, None] * st_k + n[None, :], mask=(k < K)[:, None] & inside[None, :],
                other=0.0).to(tl.float32)  # (KP, BLOCK_N): read once for all L*cols tiles
    for c in tl.static_range(COLS):
        at = _tile_address(n, R, IN_T, OUT_T, r, c, s0, s1, sr, ROWS, PARTS)
        _write_tile(C0, W0, t, at, k, inside, r, c, COLS, K)
        if LAYERS > 1:
            _write_tile(C1, W1, t, at, k, inside, r, c, COLS, K)
        if LAYERS > 2:
            _write_tile(C2, W2, t, at, k, inside, r, c, COLS, K)
        if LAYERS > 3:
            _write_tile(C3, W3, t, at, k, inside, r, c, COLS, K)


@triton.jit
def _tile_gradients(C, G, DC, t, dt, at, k, inside, block, layer, r, c, ROWS: tl.constexpr, COLS: tl.constexpr,
                    K: tl.constexpr, LAYERS: tl.constexpr, NEED_T: tl.constexpr, NEED_C: tl.constexpr):
    """Adds tile (r, c) of layer ``layer``'s share to ``dt``; stores its coefficient partial sums."""
    g = tl.load(G + at, mask=inside, other=0.0).to(tl.float32)
    if NEED_T:
        a = tl.load(C + (r * COLS + c) * K + k, mask=k < K, other=0.0).to(tl.float32)
        dt += a[:, None] * g[None, :]
    if NEED_C:  # partial sums, laid out (blocks, L, rows, cols, K)
        at_c = (((block * LAYERS + layer) * ROWS + r) * COLS + c) * K + k
        tl.store(DC + at_c, tl.sum(t * g[None, :], axis=1), mask=k < K)
    return dt


@triton.jit
def _mix_backward(T, C0, C1, C2, C3, G0, G1, G2, G3, DT, DC, N, R, IN_T, OUT_T, st_r, st_k, s0, s1, sr,
                  ROWS: tl.constexpr, COLS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                  LAYERS: tl.constexpr, PARTS: tl.constexpr, BLOCK_N: tl.constexpr,
                  NEED_T: tl.constexpr, NEED_C: tl.constexpr):
    block, r = tl.program_id(0), tl.program_id(1)
    n = block.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = n < N
    k = tl.arange(0, KP)
    t = tl.load(T + r * st_r + k[:, None] * st_k + n[None, :], mask=(k < K)[:, None] & inside[None, :],
                other=0.0).to(tl.float32)
    dt = tl.zeros((KP, BLOCK_N), dtype=tl.float32)
    for c in tl.static_range(COLS):
        at = _tile_address(n, R, IN_T, OUT_T, r, c, s0, s1, sr, ROWS, PARTS)
        dt = _tile_gradients(C0, G0, DC, t, dt, at, k, inside, block, 0, r, c, ROWS, COLS, K, LAYERS, NEED_T,
                             NEED_C)
        if LAYERS > 1:
            dt = _tile_gradients(C1, G1, DC, t, dt, at, k, inside, block, 1, r, c, ROWS, COLS, K, LAYERS,
                                 NEED_T, NEED_C)
        if LAYERS > 2:
            dt = _tile_gradients(C2, G2, DC, t, dt, at, k, inside, block, 2, r, c, ROWS, COLS, K, LAYERS,
                                 NEED_T, NEED_C)
        if LAYERS > 3:
            dt = _tile_gradients(C3, G3, DC, t, dt, at, k, inside, block, 3, r, c, ROWS, COLS, K, LAYERS,
                                 NEED_T, NEED_C)
    if NEED_T:
        tl.store(DT + (r * K + k[:, None]) * N + n[None, :], dt.to(DT.dtype.element_ty),
                 mask=(k < K)[:, None] & inside[None, :])


MAX_LAYERS = 4  # layers per bank group the kernels take (pointer arguments); larger groups use the torch path


def _four(tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``tensors`` padded to MAX_LAYERS pointers with the first (never touched past LAYERS)."""
    return (*tensors, *(tensors[0],) * (MAX_LAYERS - len(tensors)))


def _launch_shape(shape: MixShape) -> tuple[int, int, int, int, int, int]:
    """(N, R, in_t, out_t, KP, BLOCK_N) of a group."""
    out_t, in_t, *rest = shape.tile
    r = 1
    for d in rest:
        r *= d
    kp = triton.next_power_of_2(shape.k)
    held = kp + shape.layers * shape.cols  # (K + L*cols) rows of values live per program
    block = max(128, min(BLOCK, triton.next_power_of_2(8192 // held)))
    return shape.tile_numel, r, in_t, out_t, kp, block


def _warps(block: int) -> int:
    """With 8 warps a 1024-wide block takes 62 to 122 registers a thread on sm_90 (4 warps: 82 to
    210, by cuobjdump), so more blocks fit on each multiprocessor."""
    return 8 if block >= 1024 else 4


def _weight_strides(t: Tensor) -> tuple[int, int, int] | None:
    """``(s0, s1, s_rest)`` if the dims after the first two collapse into one stride, else None."""
    strides, sizes = t.stride(), t.shape
    if t.dim() == 2:
        return strides[0], strides[1], 1
    for j in range(2, t.dim() - 1):
        if sizes[j] > 1 and strides[j] != strides[j + 1] * sizes[j + 1]:
            return None
    return strides[0], strides[1], strides[-1]


def _output_dtype(templates: Tensor) -> torch.dtype:
    device = templates.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else templates.dtype


class _TritonMix(torch.autograd.Function):
    """``mgtool.mixing._Mix`` (one output per layer) with the two fused kernels."""

    @staticmethod
    def forward(ctx, shape: MixShape, channels_last: bool, templates: Tensor,  # type: ignore[override]
                *coefs: Tensor) -> tuple[Tensor, ...]:
        n, r, in_t, out_t, kp, block = _launch_shape(shape)
        fmt = torch.channels_last if channels_last and len(shape.weight) == 4 else torch.contiguous_format
        weights = tuple(torch.empty(shape.weight, dtype=_output_dtype(templates), device=templates.device,
                                    memory_format=fmt) for _ in coefs)
        s0, s1, sr = _weight_strides(weights[0])
        grid = (triton.cdiv(n, block), shape.rows)
        _mix_forward[grid](templates, *_four(coefs), *_four(weights), n, r, in_t, out_t, templates.stride(0),
                           templates.stride(1), s0, s1, sr, ROWS=shape.rows, COLS=shape.cols, K=shape.k, KP=kp,
                           LAYERS=shape.layers, PARTS=shape.row_interleave, BLOCK_N=block, num_warps=_warps(block))
        ctx.save_for_backward(templates, *coefs)
        ctx.shape = shape
        return weights

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        templates, *coefs = ctx.saved_tensors
        shape: MixShape = ctx.shape
        need_t, need_c = ctx.needs_input_grad[2], any(ctx.needs_input_grad[3:])
        n, r, in_t, out_t, kp, block = _launch_shape(shape)
        strides = [_weight_strides(g) for g in grads]
        if strides[0] is None or any(x != strides[0] for x in strides[1:]):  # layouts differ: rare
            grads = tuple(g.contiguous() for g in grads)
            strides = [_weight_strides(grads[0])]
        s0, s1, sr = strides[0]
        blocks = triton.cdiv(n, block)
        grad_t = torch.empty((shape.rows, shape.k, *shape.tile), dtype=templates.dtype, device=templates.device) \
            if need_t else templates  # a pointer the kernel does not touch
        partial = torch.empty((blocks, shape.layers, shape.rows, shape.cols, shape.k), dtype=torch.float32,
                              device=templates.device) if need_c else templates
        _mix_backward[(blocks, shape.rows)](
            templates, *_four(coefs), *_four(grads), grad_t, partial, n, r, in_t, out_t, templates.stride(0),
            templates.stride(1), s0, s1, sr, ROWS=shape.rows, COLS=shape.cols, K=shape.k, KP=kp,
            LAYERS=shape.layers, PARTS=shape.row_interleave, BLOCK_N=block, NEED_T=need_t, NEED_C=need_c,
            num_warps=_warps(block))
        grad_c = partial.sum(0).to(coefs[0].dtype).unbind(0) if need_c else (None,) * shape.layers
        return (None, None, grad_t if need_t else None, *grad_c)


def mix_group_triton(bank: Tensor, coefficients: Sequence[Tensor], shape: MixShape,
                     channels_last: bool = False) -> tuple[Tensor, ...]:
    """``mgtool.mixing.mix_group`` by the fused kernels; ``channels_last`` writes 4-D weights
    in that memory format (what a channels_last conv would otherwise copy them into)."""
    if torch.jit.is_tracing() or shape.layers > MAX_LAYERS:  # FLOP counters see the einsum
        return mix_group(bank, coefficients, shape)
    templates = row_templates(bank, shape.row_sets)
    if not templates[0, 0].is_contiguous():  # the kernels read a tile as one run (rows and K may stride)
        templates = templates.contiguous()
    return _TritonMix.apply(shape, channels_last, templates, *[c.contiguous() for c in coefficients])


@functools.cache
def unavailable(device: str) -> str | None:
    """Why the kernels cannot run on ``device`` (None when they can): a tiny group is generated
    and differentiated there once per process and compared with the torch path."""
    try:
        gen = torch.Generator().manual_seed(0)
        bank = torch.randn(2, 2, 3, 5, 3, generator=gen)
        coefs = [torch.randn(2, 2, 2, generator=gen) for _ in range(2)]
        shape = MixShape.of(bank.shape, 2, 2, ((0,), (1,)))
        with torch.autocast(torch.device(device).type, enabled=False):
            b, cs = bank.to(device).requires_grad_(), [c.to(device).requires_grad_() for c in coefs]
            got = mix_group_triton(b, cs, shape)
            torch.autograd.backward(got, [torch.ones_like(w) for w in got])
        want = mix_group(bank.double(), [c.double() for c in coefs], shape)  # exact, whatever TF32 says
        torch.testing.assert_close(torch.stack(got).cpu().double(), torch.stack(want), rtol=1e-4, atol=1e-4)
        if b.grad is None or not bool(torch.isfinite(b.grad).all()):
            return "the backward kernel gave no finite template gradient"
    except Exception as e:  # any failure to compile or launch means: use the torch path
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None
