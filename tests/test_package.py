"""Packaging promises: torch alone builds a model; the extras' packages stay out of `import unireplknet`."""

import subprocess
import sys

SCRIPT = """
import sys
for name in ("timm", "torchvision", "huggingface_hub", "safetensors", "triton", "onnx", "onnxruntime",
             "matplotlib", "PIL", "sklearn", "tqdm"):
    sys.modules[name] = None  # importing any of these now raises ImportError
import torch
import unireplknet
model = unireplknet.create_model("unireplknet_a", num_classes=3).eval()
with torch.no_grad():
    y = model(torch.randn(1, 3, 64, 64))
    d = unireplknet.reparameterize(model)(torch.randn(1, 3, 64, 64))
assert y.shape == (1, 3) and d.shape == (1, 3)
print("ok")
"""


def test_import_and_build_need_torch_alone():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_does_not_load_heavy_extras():
    code = ("import sys, unireplknet, unireplknet.ops, unireplknet.cli.main; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'matplotlib', 'triton', 'huggingface_hub') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"UNIREPLKNET_NO_TIMM": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
