"""The `cpu` scan as a torch.library custom op: op checks, torch.compile, meta tensors, and
deterministic gradients."""
from __future__ import annotations

import pytest
import torch

import climp
from climp.ops import selective_scan, selective_scan_reference
from climp.ops.cpu_scan import scan_forward

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch=2, dim=16, length=13, state=4, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5 - 1.0,
        "A": -(randn(dim, state).abs() + 0.2),
        "B": randn(*bc),
        "C": randn(*bc),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim) * 0.3,
    }


def leaves(inputs):
    return {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize("state,groups,last", [(4, None, True), (1, 2, False)])
def test_opcheck(state, groups, last):
    """torch.library.opcheck: schema, fake implementation, autograd registration, AOT dispatch."""
    x = leaves(make_inputs(state=state, groups=groups, length=9))
    args = (*(x[k] for k in NAMES), True, last, True)
    torch.library.opcheck(scan_forward, args)


def test_compiled_scan_is_one_graph_and_matches_eager():
    """fullgraph=True: the scan (its backend choice included) traces without a graph break."""
    inputs = make_inputs(groups=2)

    def loss(u, delta, A, B, C, D, z, delta_bias):
        out, last = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True)
        return (out * torch.linspace(-1, 1, out.shape[-1])).square().sum() + last.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (loss, compiled):
        x = leaves(inputs)
        value = fn(*(x[k] for k in NAMES))
        results.append((value, torch.autograd.grad(value, [x[k] for k in NAMES])))
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, a, b in zip(NAMES, results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, msg=lambda m: f"d{name}: {m}")


def tiny_climp():
    torch.manual_seed(0)
    return climp.create_model("climp-tiny", vision_cfg={"image_size": 32, "drop_path_rate": 0.0})


def training_step(model, images, texts):
    """Loss and parameter gradients of one CLIP-loss step (open_clip's ClipLoss)."""
    from open_clip.loss import ClipLoss

    out = model(images, texts)
    loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def step_inputs(batch=4):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    texts = torch.randint(1, 49406, (batch, 8), generator=g)
    texts[:, 0], texts[:, -1] = 49406, 49407
    return images, texts


def assert_step_matches(backend):
    model = tiny_climp()
    images, texts = step_inputs()
    loss, grads = training_step(model, images, texts)
    compiled_loss, compiled_grads = training_step(torch.compile(model, backend=backend), images, texts)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_compiled_climp_tiny_training_step_matches_eager_aot():
    """Dynamo + AOTAutograd through the whole model (graph capture, the op's fake and autograd)."""
    assert_step_matches("aot_eager")


@pytest.mark.slow
def test_climp_tiny_towers_compile_as_one_graph():
    """fullgraph=True on each tower: no graph break anywhere (scan ops included)."""
    model = tiny_climp()
    images, texts = step_inputs()
    for tower, x in ((model.visual, images), (model.text, texts)):
        compiled = torch.compile(tower, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), tower(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_climp_tiny_training_step_matches_eager_inductor():
    """The default torch.compile backend, generated code included."""
    assert_step_matches("inductor")


def test_model_on_meta_device_runs_forward():
    with torch.device("meta"):
        model = climp.create_model("climp-tiny")
    images = torch.empty(2, 3, 64, 64, device="meta")
    texts = torch.zeros(2, 8, dtype=torch.long, device="meta")
    out = model(images, texts)
    assert out["image_features"].shape == (2, 256) and out["image_features"].device.type == "meta"
    assert out["text_features"].shape == (2, 256)


def test_meta_scan_shapes_without_the_kernel(monkeypatch):
    """Meta tensors take the op's fake implementation: nothing is built or loaded."""
    from climp.ops import cpu_build

    def no_kernel():
        raise AssertionError("the kernel was loaded for meta tensors")

    monkeypatch.setattr(cpu_build, "load_cpu_kernel", no_kernel)
    x = {k: v.to("meta") for k, v in make_inputs().items()}
    out, last = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, return_last_state=True)
    assert out.shape == x["u"].shape and last.shape == (2, 16, 4)


def backward_twice(inputs):
    results = []
    for _ in range(2):
        x = leaves(inputs)
        out = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend="cpu")
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        results.append(torch.autograd.grad(out, [x[k] for k in NAMES], weights))
    return results


@pytest.mark.parametrize("state,groups", [(1, 4), (16, None)])
def test_backward_is_bit_identical_at_two_threads(state, groups):
    """Big enough that the kernel splits the work over two threads (>= 2 * 2^16 updates), with
    sums over the batch (dA, dD, d delta_bias) and over channels (dB, dC). (A dynamic work split
    fails this at these shapes.)"""
    inputs = make_inputs(batch=8, dim=512, length=131, state=state, groups=groups)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = backward_twice(inputs)
    finally:
        torch.set_num_threads(previous)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"d{name} differs between two identical backward passes"


def test_training_steps_are_bit_identical_at_two_threads():
    """A few AdamW steps of climp-tiny twice from the same seed: identical weights."""
    images, texts = step_inputs(batch=8)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for _ in range(2):
            model = tiny_climp()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for _ in range(2):
                loss, grads = training_step(model, images, texts)
                for p, g in zip([p for p in model.parameters() if p.requires_grad], grads):
                    p.grad = g
                opt.step()
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(previous)
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), f"{name} differs between two identical runs"


def test_reference_is_not_routed_through_the_op():
    """Explicit backends other than cpu keep their own autograd (the reference stays the ground
    truth): its output has no custom-op node."""
    x = leaves(make_inputs(length=4))
    out = selective_scan(*(x[k] for k in NAMES), backend="reference")
    assert "climp" not in type(out.grad_fn).__name__.lower()
    torch.testing.assert_close(out, selective_scan_reference(*(x[k] for k in NAMES)))


def test_kernel_shares_torchs_openmp_runtime():
    """One OpenMP runtime in a process that imports torch and loads the kernel: the kernel's
    parallel regions run in PyTorch's team. (A fresh process: other tests import libraries,
    such as scikit-learn, that bring OpenMP runtimes of their own.)"""
    import json
    import subprocess
    import sys

    from climp.ops.cpu_build import torch_openmp_library

    if not sys.platform.startswith("linux") or torch_openmp_library() is None:
        pytest.skip("needs Linux and a PyTorch built with libgomp")
    code = ("import json\nfrom pathlib import Path\n"
            "from climp.ops.cpu_build import load_cpu_kernel\n"
            "load_cpu_kernel()\n"
            "maps = Path('/proc/self/maps').read_text().splitlines()\n"
            "print(json.dumps(sorted({l.split()[-1] for l in maps if 'libgomp' in l.split()[-1]})))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mapped = json.loads(result.stdout)
    assert len(mapped) == 1, f"more than one OpenMP runtime loaded: {mapped}"


def test_import_climp_makes_idle_openmp_threads_sleep_after_a_short_spin_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = "import climp, os; print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for preset, expected in (({}, "PASSIVE 1000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE 1000"),
                             ({"GOMP_SPINCOUNT": "0"}, "PASSIVE 0")):
        result = subprocess.run([sys.executable, "-c", code], env=dict(env, **preset), capture_output=True,
                                text=True, check=True)
        assert result.stdout.strip() == expected
