"""The fused Triton generation kernels (``mgtool.mixing_triton``) against the torch path.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set by conftest before the module is imported); with CUDA the same checks run compiled on the
GPU (marked ``gpu``). Shapes are tiny: the interpreter runs a kernel in numpy.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

import mgtool.model
from mgtool.archs import ArchSpec
from mgtool.errors import SettingError
from mgtool.mixing import MixShape, mix_group
from mgtool.templates import fresh_template_mixing

pytest.importorskip("triton")
from mgtool import mixing_triton  # noqa: E402  (after the interpreter switch in conftest)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)")
on_gpu = [pytest.mark.gpu, pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs CUDA")]
DEVICES = [pytest.param("cpu", marks=interpreted), pytest.param("cuda", marks=on_gpu)]
FP32 = {"rtol": 1e-5, "atol": 1e-5}  # fp32, summed in another order

# (sets, row_sets, cols, layers, tile, row_interleave): what each group layout exercises
CASES = {
    "1x1": (1, ((0,),), 1, 1, (4, 5, 3, 3), 1),
    "1x1-pair": (1, ((0,),), 1, 2, (6, 3, 3, 3), 1),
    "2x2": (2, ((0,), (1,)), 2, 2, (6, 5, 3, 3), 1),
    "2x2-four-layers": (2, ((0,), (1,)), 2, 4, (2, 3, 1, 1), 1),
    "one-row-over-both-sets": (2, ((0, 1),), 2, 2, (3, 7), 1),
    "shared-bank": (1, ((0,), (0,)), 3, 2, (5, 3), 1),
    "gathered": (2, ((1,), (0,)), 1, 1, (4, 3, 1, 1), 1),
    "odd-sizes": (1, ((0,),), 1, 3, (7, 13), 1),
    "vit-qkv-2x2": (2, ((0,), (1,)), 2, 2, (12, 5), 3),
    "five-layers-torch-path": (1, ((0,),), 1, 5, (3, 4), 1),
}


def _group(case: str, device: str, templates: int = 3, seed: int = 0):
    sets, row_sets, cols, layers, tile, parts = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(sets, templates, *tile, generator=gen)
    shape = MixShape.of(bank.shape, layers, cols, row_sets, parts)
    coefs = [torch.randn(shape.rows, cols, shape.k, generator=gen) for _ in range(layers)]
    grads = [torch.randn(shape.weight, generator=gen) for _ in range(layers)]
    return bank.to(device), [c.to(device) for c in coefs], shape, [g.to(device) for g in grads]


def _run(fn, bank, coefs, shape, grads, *, need=(True, True), **kwargs):
    """Weights, template gradient and coefficient gradients of ``fn``."""
    b = bank.clone().requires_grad_(need[0])
    cs = [c.clone().requires_grad_(need[1]) for c in coefs]
    weights = fn(b, cs, shape, **kwargs)
    torch.autograd.backward(weights, grads)
    return [w.detach() for w in weights], b.grad, [c.grad for c in cs]


def _assert_same(got, want, **tol) -> None:
    (gw, gb, gc), (ww, wb, wc) = got, want
    for x, y in zip(gw, ww, strict=True):
        assert_close(x, y, **tol)
    for x, y in [(gb, wb), *zip(gc, wc, strict=True)]:
        assert (x is None) == (y is None)
        if x is not None:
            assert_close(x, y, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_kernels_equal_the_torch_path_in_fp32(case, device):
    bank, coefs, shape, grads = _group(case, device)
    _assert_same(_run(mixing_triton.mix_group_triton, bank, coefs, shape, grads),
                 _run(mix_group, bank, coefs, shape, grads), **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["1x1-pair", "2x2", "vit-qkv-2x2"])
def test_under_bf16_autocast_weights_are_bf16_and_gradients_accumulate_in_fp32(case, device):
    bank, coefs, shape, grads = _group(case, device)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _run(mixing_triton.mix_group_triton, bank, coefs, shape, [g.bfloat16() for g in grads])
        want = _run(mix_group, bank, coefs, shape, [g.bfloat16().float() for g in grads])
    assert all(w.dtype == torch.bfloat16 for w in got[0]) and all(w.dtype == torch.float32 for w in want[0])
    # the weights: the fp32 value rounded once to bf16 (at most one bf16 step apart, 2^-7 relative)
    for x, y in zip(got[0], want[0]):
        assert_close(x.float(), y.bfloat16().float(), rtol=2**-7, atol=1e-5)
    # the gradients: the same bf16 weight gradients, accumulated in fp32 by both
    _assert_same(([], got[1], got[2]), ([], want[1], want[2]), **FP32)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_weights_and_gradients_in_any_layout(device):
    bank, coefs, shape, grads = _group("2x2", device)
    last = [g.contiguous(memory_format=torch.channels_last) for g in grads]
    got = _run(mixing_triton.mix_group_triton, bank, coefs, shape, last, channels_last=True)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in got[0])
    want = _run(mix_group, bank, coefs, shape, grads)
    _assert_same(got, want, **FP32)
    odd = [grads[0].transpose(2, 3).contiguous().transpose(2, 3), last[1]]  # rest dims not collapsible, mixed
    _assert_same(_run(mixing_triton.mix_group_triton, bank, coefs, shape, odd), want, **FP32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_only_the_gradients_asked_for(device, need):
    bank, coefs, shape, grads = _group("2x2", device)
    got = _run(mixing_triton.mix_group_triton, bank, coefs, shape, grads, need=need)
    assert (got[1] is not None) == need[0] and all((c is not None) == need[1] for c in got[2])
    _assert_same(got, _run(mix_group, bank, coefs, shape, grads, need=need), **FP32)


def _tiny(device: str, kernel: str, seed: int = 0):
    model = fresh_template_mixing(ArchSpec("tiny-cnn", 1.0, 5, 3, {}), seed=seed).to(device)
    assert model.set_mixing_kernel(kernel, device) == kernel
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_trains_the_same_with_either_kernel(device):
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for kernel in ("triton", "torch"):
        model = _tiny(device, kernel).train()
        model(x).square().sum().backward()
        results.append((model(x).detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert_close(results[0][0], results[1][0], **FP32)
    for name, grad in results[1][1].items():
        assert_close(results[0][1][name], grad, rtol=1e-4, atol=1e-4, msg=name)  # through the whole net


@pytest.mark.parametrize("device", DEVICES)
def test_cached_evaluation_weights_follow_autocast(device):
    """bf16 weights made under autocast are not reused by an fp32 forward (which would fail)."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)).to(device)
    model = _tiny(device, "triton").eval()
    with torch.no_grad():
        with torch.autocast(device, dtype=torch.bfloat16):
            model(x)
        assert_close(model(x), _tiny(device, "torch").eval()(x), **FP32)


def test_auto_is_the_torch_path_on_the_cpu_and_bad_names_are_refused():
    model = fresh_template_mixing(ArchSpec("tiny-cnn", 1.0, 5, 3, {}), seed=0)
    assert model.set_mixing_kernel("auto", "cpu") == "torch" and model.mixing_kernel == "torch"
    with pytest.raises(SettingError, match="--mixing-kernel must be one of auto, triton, torch"):
        model.set_mixing_kernel("cuda-graphs", "cpu")


@pytest.fixture
def fresh_check(monkeypatch: pytest.MonkeyPatch):
    """The once-per-process availability checks forgotten before and after the test."""
    mgtool.model._triton_mixer.cache_clear()
    mixing_triton.unavailable.cache_clear()
    yield monkeypatch
    mgtool.model._triton_mixer.cache_clear()
    mixing_triton.unavailable.cache_clear()


def _kernels_chosen_with_warnings(times: int) -> tuple[list[str], list[str]]:
    kernels = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(times):
            model = fresh_template_mixing(ArchSpec("tiny-cnn", 1.0, 5, 3, {}), seed=seed)
            kernels.append(model.set_mixing_kernel("triton", "cpu"))
            assert model.mixing_kernel == kernels[-1]
            model(torch.zeros(1, 3, 16, 16))  # generates with the kernel chosen
    return kernels, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_without_triton_the_torch_path_is_used_with_one_warning(fresh_check):
    fresh_check.setitem(__import__("sys").modules, "mgtool.mixing_triton", None)  # import fails
    kernels, messages = _kernels_chosen_with_warnings(3)
    assert kernels == ["torch"] * 3
    assert len(messages) == 1 and "cannot import triton" in messages[0] and "torch path" in messages[0]


def test_when_the_kernels_fail_to_compile_the_torch_path_is_used_with_one_warning(fresh_check):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed\nmore detail")

    fresh_check.setattr(mixing_triton, "mix_group_triton", broken)
    kernels, messages = _kernels_chosen_with_warnings(2)
    assert kernels == ["torch"] * 2
    assert len(messages) == 1 and "RuntimeError: PTX assembly failed" in messages[0]
    assert "more detail" not in messages[0]


def test_the_cli_refuses_an_unknown_kernel_in_one_line(tmp_path):
    from mgtool.cli import app

    r = CliRunner().invoke(app, ["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "synthetic",
                                 "--epochs", "1", "--mixing-kernel", "fast", "-o", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mixing-kernel must be one of auto, triton, torch, got 'fast'" in lines[0], lines
    assert not (tmp_path / "m.safetensors").exists()


@interpreted
def test_train_small_with_the_triton_kernel(tmp_path, fresh_check):
    """The trainer hands --mixing-kernel to the model (interpreted kernels on the CPU)."""
    import json

    from mgtool.cli import app

    calls = [0]
    real = mixing_triton.mix_group_triton

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    fresh_check.setattr(mixing_triton, "mix_group_triton", counting)
    args = ["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--data-opt",
            "shape=3x8x8", "--data-opt", "train_size=32", "--data-opt", "test_size=16", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--quiet", "--json", "-o"]
    results = {}
    for kernel in ("triton", "torch"):
        r = CliRunner().invoke(app, [*args, str(tmp_path / f"{kernel}.safetensors"), "--mixing-kernel", kernel])
        assert r.exit_code == 0, r.output
        results[kernel] = json.loads(r.stdout)
        if kernel == "triton":
            assert calls[0] > 2, calls  # the check, then two training steps and the evaluation
            calls[0] = 0
    assert calls[0] == 0
    assert results["triton"]["test_loss"] == pytest.approx(results["torch"]["test_loss"], rel=1e-4)


def test_the_cpu_default_never_loads_the_kernels():
    import subprocess
    import sys

    code = ("import sys, torch; from mgtool.archs import ArchSpec; from mgtool.templates import fresh_template_mixing; "
            "m = fresh_template_mixing(ArchSpec('tiny-cnn', 1.0, 5, 3, {}), seed=0); "
            "assert m.set_mixing_kernel('auto', 'cpu') == 'torch'; m(torch.zeros(1, 3, 16, 16)).sum().backward(); "
            "print('mgtool.mixing_triton' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------- GPU only


@pytest.mark.parametrize("backend", [pytest.param("inductor", marks=on_gpu)])
def test_compiled_generation_with_the_kernels_equals_eager(backend):
    """The kernels as user-defined Triton kernels inside one compiled graph (the interpreter cannot be traced)."""
    from tests.test_mixing import check_compiled_generation

    check_compiled_generation(backend, "cuda", "triton")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=on_gpu)])
def test_a_model_moved_off_the_gpu_generates_with_the_torch_path(device):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    model = _tiny(device, "triton").eval()
    with torch.no_grad():
        on_gpu_out = model(x.to(device)).cpu()
        assert_close(model.cpu()(x), on_gpu_out, **FP32)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["triton", "torch"])
def test_generation_never_waits_for_the_gpu(kernel):
    """Forward and backward of every group, under CUDA's sync debug mode: any sync raises."""
    model = _tiny("cuda", kernel).train()
    model.generate_weights()  # first call: compilation, allocator warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.generate_weights()
        weights = [m.weight for m, _, _ in model._mixed]
        torch.autograd.backward(weights, [torch.ones_like(w) for w in weights])
    finally:
        torch.cuda.set_sync_debug_mode("default")


AOT = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mgtool import mixing_triton as mt

def build(fn, weights, constexprs):
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ("T", "C0", "C1", "C2", "C3", "DT", "DC"):
            types[name] = "*fp32"
        elif name[0] in "WG" and name[1:].isdigit():
            types[name] = weights
        else:
            types[name] = "i64" if name in ("st_r", "st_k", "s0") else "i32"
    src = ASTSource(fn=fn, signature=types, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert len(kernel.asm["cubin"]) > 1000

for weights, layers, cols, rows, k, parts in [("*fp32", 1, 1, 1, 4, 1), ("*bf16", 2, 2, 2, 8, 3)]:
    shape = dict(ROWS=rows, COLS=cols, K=k, KP=triton.next_power_of_2(k), LAYERS=layers, PARTS=parts, BLOCK_N=1024)
    build(mt._mix_forward, weights, shape)
    build(mt._mix_backward, weights, dict(shape, NEED_T=True, NEED_C=True))
print("compiled")
'''


def test_the_kernels_compile_for_an_h100_without_one():
    """Triton's interpreter forgives what its compiler refuses: the kernels are also compiled, in a
    process without the interpreter, to sm_90 machine code (ptxas ships with triton; no GPU needed)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "compiled", r.stderr[-2000:]


CAPTURE = r'''
import functools
import torch
import torch.utils._triton

torch.utils._triton.has_triton = lambda: True  # dynamo's Triton support, which it turns off without a GPU

from mgtool import mixing_triton
from mgtool.archs import ArchSpec
from mgtool.templates import fresh_template_mixing

model = fresh_template_mixing(ArchSpec("tiny-cnn", 1.0, 5, 3, {}), seed=0).train()
# the kernels chosen without the availability check, which would launch them on the CPU
model._triton_mix = ("cpu", functools.partial(mixing_triton.mix_group_triton, channels_last=False))
graphs = []


class Captured(Exception):
    pass


def backend(gm, example_inputs):
    graphs.append(gm)

    def run(*args):
        raise Captured  # nothing runs: there is no GPU

    return run


def generate(model):
    model.generate_weights()
    return [m.weight for m, _, _ in model._mixed]


try:
    torch.compile(generate, backend=backend, fullgraph=True)(model)
except Captured:
    pass
(gm,) = graphs
call = "higher_order.triton_kernel_wrapper_mutation("
kernels = sum(getattr(gm, name).code.count(call) for name, _ in gm.named_children())
print(len(model._groups), kernels)
'''


def test_dynamo_captures_the_kernels_in_one_graph():
    """``torch.compile(fullgraph=True)`` takes the whole Triton generation, forward and backward,
    as user-defined Triton kernels in one graph. Dynamo enables that support only where a GPU is
    present, so here it is switched on by hand (a private torch switch) and only the capture is
    checked; the compiled run is a GPU test (test_compiled_generation_with_the_kernels_equals_eager)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", CAPTURE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    groups, kernels = map(int, r.stdout.split())
    assert kernels == 2 * groups  # one forward and one backward kernel per bank group
