"""Image-label pretraining of a detector's backbone (`task_args.label_pretrain_steps`): it learns class presence
from the images, keeps only the backbone, caches it in the run folder for a resume, and runs from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_detection_model import SMALL_HEAD, TINY, box_target
from unireplknet.data.coco import collate_detection
from unireplknet.models.detection import CascadeMaskRCNN
from unireplknet.models.features import UniRepLKNetFeatures
from unireplknet.tasks.detection_pretrain import pretrain_on_image_labels, pretrained_backbone


class ColourScenes(torch.utils.data.Dataset):
    """Images whose classes are set by their colour: a red image holds class 1 and 3, a blue one class 2;
    a different random box layout each time, so only the colour tells the label set."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            red = i % 2 == 0
            image = torch.rand(3, 64, 64, generator=g) * 0.3
            image[0 if red else 2] += 0.6
            labels = [1, 3] if red else [2]
            boxes = [[4, 4, 30, 30], [34, 34, 60, 60]][:len(labels)]
            self.items.append((image, box_target(64, 64, boxes, labels)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _detector() -> CascadeMaskRCNN:
    return CascadeMaskRCNN(UniRepLKNetFeatures(**TINY), 3, 1, **{**SMALL_HEAD, "min_size": 64, "max_size": 64})


def test_pretraining_learns_held_out_class_presence_and_changes_only_the_backbone():
    torch.manual_seed(0)
    model = _detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    untrained = pretrain_on_image_labels(_detector(), ColourScenes(8, 0), ColourScenes(8, 1), 3, 1, 1e-9, 4,
                                         collate_detection)
    result = pretrain_on_image_labels(model, ColourScenes(16, 0), ColourScenes(8, 1), 3, 60, 3e-3, 4,
                                      collate_detection)
    assert result["exact_match"] == 100.0 and result["label_accuracy"] == 100.0, result
    assert untrained["exact_match"] < 100.0  # the held-out scenes are not answered by a fresh network
    assert result["loss"] < 0.2
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("backbone.") for k in changed)
    assert model.training  # the mode it was in
    with pytest.raises(ValueError, match="steps"):
        pretrain_on_image_labels(model, ColourScenes(4, 0), None, 3, 0, 1e-3, 2, collate_detection)
    with pytest.raises(ValueError, match="one batch of 8"):
        pretrain_on_image_labels(model, ColourScenes(4, 0), None, 3, 5, 1e-3, 8, collate_detection)


def test_the_pretrained_backbone_is_cached_and_a_resume_loads_it_without_training(tmp_path):
    torch.manual_seed(1)
    first, second = _detector(), _detector()
    cache = tmp_path / "image_label_backbone.pt"

    def train_first() -> None:
        with torch.no_grad():
            for p in first.backbone.parameters():
                p.add_(1.0)

    pretrained_backbone(first, cache, train_first)
    assert cache.is_file()

    def must_not_run() -> None:
        raise AssertionError("a cached backbone was trained again")

    pretrained_backbone(second, cache, must_not_run)
    for a, b in zip(first.backbone.state_dict().values(), second.backbone.state_dict().values()):
        assert torch.equal(a, b)
    calls = []
    pretrained_backbone(second, None, lambda: calls.append(1))  # no run folder: train, write nothing
    assert calls == [1] and sorted(p.name for p in tmp_path.iterdir()) == ["image_label_backbone.pt"]


def test_train_with_label_pretraining_writes_the_backbone_and_refuses_bad_settings(tmp_path, capsys):
    pytest.importorskip("faster_coco_eval", reason="detection extra not installed")
    from tests.test_detection_task import TASK_ARGS
    from tests.test_detection_task import TINY as CLI_TINY
    from unireplknet.cli.main import main
    from unireplknet.data.synth_detection import write_synth_coco

    coco = write_synth_coco(tmp_path / "scenes", size=96, splits={"train": 6, "val": 3})
    args = [*CLI_TINY, "--set", f"task_args={json.dumps({**TASK_ARGS, 'label_pretrain_steps': 3})}"]
    out = tmp_path / "run"
    assert main(["train", *args, "--data", str(coco), "--output", str(out), "--epochs", "1"]) == 0
    assert (out / "image_label_backbone.pt").is_file()
    state = torch.load(out / "image_label_backbone.pt", weights_only=True)
    assert state and all(not k.startswith("backbone.") for k in state)  # the backbone's own keys
    (out / "image_label_backbone.pt").write_bytes(b"stale")  # --overwrite starts over: the cache goes too
    assert main(["train", *args, "--data", str(coco), "--output", str(out), "--epochs", "1", "--overwrite"]) == 0
    assert torch.load(out / "image_label_backbone.pt", weights_only=True).keys() == state.keys()
    capsys.readouterr()
    bad = [*CLI_TINY, "--set", f"task_args={json.dumps({**TASK_ARGS, 'label_pretrain_steps': -1})}"]
    assert main(["train", *bad, "--data", str(coco), "--output", str(tmp_path / "bad"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "label_pretrain_steps" in err, err


def test_torchrun_two_processes_pretrain_once_and_train(tmp_path):
    """Under torchrun rank 0 trains the backbone while rank 1 waits at the barrier, then both load it: the run
    neither deadlocks nor trains it twice."""
    import os
    import subprocess
    import sys

    pytest.importorskip("faster_coco_eval", reason="detection extra not installed")
    from tests.test_detection_task import TASK_ARGS
    from tests.test_detection_task import TINY as CLI_TINY
    from unireplknet.data.synth_detection import write_synth_coco

    coco = write_synth_coco(tmp_path / "scenes", size=96, splits={"train": 8, "val": 2})
    out = tmp_path / "ddp"
    args = [*CLI_TINY, "--set", f"task_args={json.dumps({**TASK_ARGS, 'label_pretrain_steps': 2})}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "unireplknet", "train", *args, "--data", str(coco), "--output", str(out), "--max-steps", "1",
           "--no-export"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP: rank 0 of 2 (gloo, cpu)" in proc.stderr
    assert proc.stderr.count("image-label pretraining: step 2/2") == 1, proc.stderr[-3000:]
    assert (out / "image_label_backbone.pt").is_file() and (out / "summary.json").is_file()
