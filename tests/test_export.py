"""engine.export: ONNX export with a dynamic batch axis, atomic write, verified against onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unireplknet.engine.export import export_onnx, onnx_op_types, verify_onnx
from unireplknet.errors import UserError
from unireplknet.utils.atomic import atomic_file


def _tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
        nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    with torch.no_grad():  # non-trivial BN statistics, so a wrong fold would show
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    return m


def test_export_matches_pytorch_with_dynamic_batch(tmp_path):
    model = _tiny_convnet().train()  # export must switch to eval itself and restore the mode
    out = export_onnx(model, tmp_path / "sub" / "m.onnx", input_size=(3, 24, 24))
    assert out == tmp_path / "sub" / "m.onnx" and out.is_file()
    assert model.training
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]  # no temp file left behind
    for batch in (1, 3, 7):  # exported with batch 2: other batch sizes must work
        diff = verify_onnx(model, out, torch.randn(batch, 3, 24, 24))
        assert diff < 1e-4
    assert "BatchNormalization" not in onnx_op_types(out)


def test_verify_detects_a_different_model(tmp_path):
    model = _tiny_convnet()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 16, 16))
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    assert verify_onnx(model, path, torch.randn(2, 3, 16, 16)) > 0.5


def test_atomic_file_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with atomic_file(target) as f:
        f.write(b"new")
    assert target.read_text() == "new"


def test_atomic_file_removes_temp_files_of_dead_writers_and_names_unwritable_paths(tmp_path):
    target = tmp_path / "m.onnx"
    dead = tmp_path / ".m.onnx.999999999.abc.tmp"  # a writer killed with -9 (no such pid)
    dead.write_bytes(b"")
    live = tmp_path / f".m.onnx.{__import__('os').getpid()}.xyz.tmp"  # a writer still running: kept
    live.write_bytes(b"")
    with atomic_file(target) as f:
        f.write(b"x")
    assert not dead.exists() and live.exists()
    with pytest.raises(UserError, match="cannot write .* a parent of it is a file"), atomic_file(target / "s") as f:
        f.write(b"x")


def test_export_refuses_unsupported_opsets(tmp_path):
    with pytest.raises(UserError, match="opset 5 is not supported"):
        export_onnx(_tiny_convnet(), tmp_path / "m.onnx", input_size=(3, 8, 8), opset=5)
    assert not list(tmp_path.iterdir())


def test_unireplknet_exports_its_blocks_channels_first(tmp_path):
    """The FFN runs as 1×1 convolutions in the exported graph (no MatMul, no per-block Transpose), so ONNX
    Runtime keeps the blocked NCHWc layout through a block; the output still matches PyTorch."""
    import unireplknet

    torch.manual_seed(0)
    model = unireplknet.create_model("unireplknet_a", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                     kernel_sizes=((3,), (13,), (13,), (3,)), num_classes=5)
    unireplknet.reparameterize(model.eval())
    out = export_onnx(model, tmp_path / "a.onnx", input_size=(3, 64, 64))
    ops = onnx_op_types(out)
    assert "MatMul" not in ops
    assert verify_onnx(model, out, torch.randn(3, 3, 64, 64)) < 1e-5
