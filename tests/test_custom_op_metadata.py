"""Every climp custom op, forward and backward, as a real model calls it: torch.library.opcheck
(schema, and the fake implementation's shapes, dtypes and strides against the real kernel's).
torch.compile's inductor asserts the real outputs' strides against the fake ones, so a mismatch
here is a `climp train --compile` failure."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import climp
from climp.ops.cpu_build import cpu_kernel_available

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not cpu_kernel_available(), reason="the CPU kernels did not build")]


class RecordClimpOps(TorchDispatchMode):
    """Records the first call of each climp:: op (overload and its tensor arguments, cloned)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "climp" and func not in self.calls:
            clone = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a
            self.calls[func] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def _recorded_calls():
    torch.manual_seed(0)
    image = {"depths": [1, 1, 1, 1], "image_size": 32}
    text = {"n_layer": 1}
    mamba2_text = {"type": "mamba2", "vocab_size": 49408, "d_model": 64, "n_layer": 1, "d_state": 16,
                   "d_conv": 4, "expand": 2, "headdim": 16, "chunk_size": 8}
    models = [climp.create_model("climp-tiny", vision_cfg=image, text_cfg=text),
              climp.create_model("climp-tiny-paper", vision_cfg=image, text_cfg=mamba2_text),
              climp.create_model("climp-mamba1d-tiny", vision_cfg={"n_layer": 1, "image_size": 32},
                                 text_cfg={**text, "scan_backend": "cpu"})]  # the unfused mixer's scan
    recorder = RecordClimpOps()
    images, texts = torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 12))
    with recorder:
        for model in models:
            out = model(images, texts)
            (out["image_features"].sum() + out["text_features"].sum()).backward()
    return recorder.calls


CALLS = _recorded_calls() if cpu_kernel_available() else {}


def test_every_op_and_its_backward_is_exercised():
    names = {str(op.overloadpacket) for op in CALLS}
    for name in ("ss2d_scan", "dwconv2d_silu", "causal_conv1d_silu", "mamba1d_scan", "rms_norm", "selective_scan"):
        assert {f"climp.{name}", f"climp.{name}_backward"} <= names, name


@pytest.mark.parametrize("op", sorted(CALLS, key=str), ids=str)
def test_fake_implementation_matches_the_kernel(op):
    args, kwargs = CALLS[op]
    torch.library.opcheck(op, args, kwargs, test_utils=("test_schema", "test_faketensor"))
