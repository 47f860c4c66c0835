"""docs/usage.md runs as written: every ```bash command and ```python block, in order, on a tiny image folder.

The `unireplknet ...` commands go through the CLI's `main` in one child process (one interpreter start
instead of one per command); `pip install` lines are not executed (no network in the test) but the extras
they name must exist in pyproject.toml and their packages must import.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "usage.md"

# packages of the extras, by import name
EXTRA_MODULES = {"train": ["timm", "torchvision", "sklearn", "matplotlib", "tqdm", "PIL", "numpy", "onnx",
                           "onnxruntime", "onnxscript", "huggingface_hub", "safetensors"]}

DRIVER = r"""
import json, shlex, sys, traceback
from unireplknet.cli.main import main
steps = json.load(open(sys.argv[1]))
for i, (kind, text) in enumerate(steps):
    print(f"=== step {i}: {kind}: {text[:100]}", flush=True)
    try:
        if kind == "bash":
            code = main(shlex.split(text)[1:])
        else:
            exec(compile(text, f"<usage.md python block {i}>", "exec"), {"__name__": "__main__"})
            code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception:
        traceback.print_exc()
        code = "exception"
    if code != 0:
        print(f"=== FAILED step {i} with {code}", flush=True)
        sys.exit(1)
print("=== ALL OK", flush=True)
"""


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of the fenced code blocks, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def bash_commands(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _make_images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        for split, n in (("train", 6), ("val", 3)):
            folder = root / "my_images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.normal(60 + 70 * c, 25, (40, 48, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")


def test_doc_has_the_whole_walkthrough():
    blocks = doc_blocks(DOC.read_text())
    commands = [c for lang, body in blocks if lang == "bash" for c in bash_commands(body)]
    subcommands = [shlex.split(c)[1] for c in commands if c.startswith("unireplknet ")]
    for needed in ("train", "eval", "reparam", "export", "predict", "bench", "erf"):
        assert needed in subcommands, needed
    assert any(c.startswith("pip install") for c in commands)
    assert all(c.startswith(("unireplknet ", "pip install ")) for c in commands), commands


def test_install_extras_exist_and_import():
    import importlib

    pyproject = (ROOT / "pyproject.toml").read_text()
    for lang, body in doc_blocks(DOC.read_text()):
        for cmd in bash_commands(body) if lang == "bash" else []:
            if not cmd.startswith("pip install"):
                continue
            for extra in re.findall(r"\[([\w,]+)\]", cmd)[0].split(","):
                assert re.search(rf"^{extra} = \[", pyproject, re.M), f"extra [{extra}] not in pyproject.toml"
                for module in EXTRA_MODULES[extra]:
                    importlib.import_module(module)


def test_usage_doc_runs(tmp_path):
    steps = []
    for lang, body in doc_blocks(DOC.read_text()):
        if lang == "bash":
            steps += [("bash", c) for c in bash_commands(body) if c.startswith("unireplknet ")]
        elif lang == "python":
            steps.append(("python", body))
    _make_images(tmp_path)
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    proc = subprocess.run([sys.executable, "-c", DRIVER, "steps.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "=== ALL OK" in proc.stdout, (proc.stdout[-4000:] + proc.stderr[-4000:])

    # what the walk-through promises exists and is what it claims
    import torch

    deploy = torch.load(tmp_path / "deploy" / "mine_deploy.pt", weights_only=True)
    assert deploy["meta"]["deploy"] is True and deploy["meta"]["class_names"] == ["cat", "dog", "fox"]
    assert (tmp_path / "deploy" / "mine.onnx").stat().st_size > 0
    assert "(5, 3)" in proc.stdout  # the python block's ONNX run with another batch size
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert report["form"] == "deploy" and report["num_images"] == 9
    bench = json.loads((tmp_path / "reports" / "bench.json").read_text())
    assert bench["deploy"]["images_per_s"] > 0 and bench["training"]["images_per_s"] > 0
    erf = json.loads((tmp_path / "erf" / "erf.json").read_text())
    assert set(erf["area_ratio"]) == {"unireplknet_a K=13", "unireplknet_a K=3"}
    assert (tmp_path / "erf" / "erf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
