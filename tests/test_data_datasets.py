"""Datasets and the resumable distributed sampler."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from unireplknet.data import (
    CORRUPT_TARGET,
    DigitsDataset,
    ImageFolderDataset,
    ResumableDistributedSampler,
    drop_corrupt,
)
from unireplknet.errors import UserError


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    train, val = DigitsDataset("train", size=16), DigitsDataset("val", size=16)
    assert (len(train), len(val)) == (1437, 360)
    assert sorted(set(val.targets)) == list(range(10))
    assert all(30 <= val.targets.count(c) <= 40 for c in range(10))  # stratified: ~36 per class
    assert val.targets == DigitsDataset("val", size=16).targets  # fixed
    img, label = val[0]
    assert img.size == (16, 16) and img.mode == "RGB" and 0 <= label < 10
    train_px = {im.tobytes() for im in train.images}
    assert sum(im.tobytes() in train_px for im in val.images) <= 3  # (the raw data has a few duplicates)


def _folder(root: Path, classes: dict[str, int]) -> None:
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 10), (i * 20, 0, 0)).save(root / name / f"{i}.png")


def test_image_folder_skips_corrupt_images_with_a_warning(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    _folder(tmp_path, {"cat": 2, "dog": 3})
    (tmp_path / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "dog" / "readme.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, transform=lambda im: torch.ones(3, 4, 4))
    assert ds.class_names == ["cat", "dog"] and len(ds) == 6
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("bad.jpg"))
    with caplog.at_level(logging.WARNING):
        img, target = ds[bad]
    assert target == CORRUPT_TARGET and torch.count_nonzero(img) == 0
    assert "bad.jpg" in caplog.text
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    targets = torch.tensor([ds[i][1] for i in range(len(ds))])
    kept_images, kept_targets, n_bad = drop_corrupt(images, targets)
    assert n_bad == 1 and len(kept_targets) == 5 and (kept_targets >= 0).all() and len(kept_images) == 5
    ds.check_readable()  # the first images are fine


def test_image_folder_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(UserError, match="no class folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="no images found"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "a" / "x.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot read any"):
        ImageFolderDataset(tmp_path).check_readable()
    with pytest.raises(UserError, match="not a training class"):
        ImageFolderDataset(tmp_path, class_names=["b"])


def test_sampler_shards_cover_the_epoch_once() -> None:
    shards = [list(ResumableDistributedSampler(10, rank=r, world_size=3, seed=1, pad=False))
              for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    padded = [list(ResumableDistributedSampler(10, rank=r, world_size=3, seed=1)) for r in range(3)]
    assert {len(s) for s in padded} == {4} and set(i for s in padded for i in s) == set(range(10))
    a, b = ResumableDistributedSampler(10, seed=1), ResumableDistributedSampler(10, seed=1)
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(b) == list(range(10))


@pytest.mark.parametrize("old_ws,new_ws", [(4, 2), (2, 3), (1, 4), (3, 1)])
def test_sampler_resume_with_another_world_size_continues_at_the_next_sample(old_ws: int,
                                                                             new_ws: int) -> None:
    n, consumed = 50, 24
    order = ResumableDistributedSampler(n, seed=7).global_order()
    before = [ResumableDistributedSampler(n, rank=r, world_size=old_ws, seed=7) for r in range(old_ws)]
    for s in before:
        s.set_epoch(0)
    # what the old job consumed: the first `consumed` samples of the global order, interleaved by rank
    seen = {i for s in before for i in list(s)[: consumed // old_ws]}
    assert seen == set(order[: consumed // old_ws * old_ws])
    after = [ResumableDistributedSampler(n, rank=r, world_size=new_ws, seed=7, pad=False)
             for r in range(new_ws)]
    for s in after:
        s.set_epoch(0, start=consumed // old_ws * old_ws)
    rest = sorted(i for s in after for i in s)
    assert sorted(rest + sorted(seen)) == list(range(n))  # every sample exactly once over the two jobs
