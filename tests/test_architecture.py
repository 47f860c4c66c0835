"""The house's rules: rooms import one way (lazy imports inside functions included, so none hides a circle), and
a new task is one file plus a recipe — shown by the toy task of docs/architecture.md, trained end to end."""

from __future__ import annotations

import ast
import json
import re
import sys
import types
from pathlib import Path

import torch

from unireplknet.cli.main import main

SRC = Path(__file__).resolve().parents[1] / "src" / "unireplknet"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: room -> the rooms it may import (besides itself). ``errors`` and ``utils`` are below every room.
ALLOWED = {
    "errors": set(),
    "utils": {"errors"},
    "ops": {"errors", "utils"},
    "layers": {"ops", "errors", "utils"},
    "modalities": {"layers", "ops", "errors", "utils"},
    "models": {"modalities", "layers", "ops", "errors", "utils"},
    "data": {"errors", "utils"},
    "analysis": {"models", "layers", "ops", "errors", "utils"},
    "engine": {"data", "models", "modalities", "layers", "ops", "errors", "utils"},
    "tasks": {"engine", "data", "models", "modalities", "analysis", "layers", "ops", "errors", "utils"},
    "cli": {"tasks", "engine", "data", "models", "modalities", "analysis", "layers", "ops", "errors", "utils"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unireplknet"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from unireplknet import models`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("unireplknet"))
    return found


def test_rooms_import_one_way() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        room = rel.parts[1] if len(rel.parts) > 1 else "__init__"
        if room in ("__init__", "__main__", "configs"):
            continue
        for target in _imports(path):
            other = _room(target)
            if other in ALLOWED and other != room and other not in ALLOWED[room]:
                wrong.append(f"{'/'.join(rel.parts)} imports {target}")
    assert not wrong, "imports against the house's direction:\n" + "\n".join(wrong)


def _toy_task_code() -> str:
    text = DOCS.read_text()
    section = text[text.index("## Adding a task"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the toy task's code block is missing from docs/architecture.md"
    return blocks[0]


def test_a_new_task_is_one_file_and_a_recipe(tmp_path: Path) -> None:
    code = _toy_task_code()
    assert len(code.splitlines()) < 100
    module = types.ModuleType("toy_count_squares")  # as if it were unireplknet/tasks/count_squares.py
    sys.modules[module.__name__] = module
    exec(compile(code, "count_squares.py", "exec"), module.__dict__)
    recipe = tmp_path / "count_squares.json"
    recipe.write_text(json.dumps({
        "task": "count_squares", "model": None, "arch": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64],
                                                         "kernel_sizes": 7},
        "epochs": 2, "batch_size": 32, "lr": 0.003, "warmup_epochs": 0, "workers": 0, "threads": 1}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "count_squares" and summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["test_split"] == "test" and summary["test_samples"] == 64 and summary["test_mae"] >= 0
    assert summary["deploy_max_abs_diff"] < 1e-4 and summary["onnx_max_abs_diff"] < 1e-4
    for name in ("best.pt", "deploy.pt", "model.onnx", "report/loss.png", "report/mae.png", "report/report.md"):
        assert (out / name).is_file(), name
    assert main(["eval", "--checkpoint", str(out / "deploy.pt"), "--output", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "count_squares" and report["test_samples"] == 64
    assert abs(report["test_mae"] - summary["test_mae"]) < 1e-4
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["meta"]["task"] == "count_squares" and ckpt["meta"]["task_args"] == {"samples": 256, "size": 32}
