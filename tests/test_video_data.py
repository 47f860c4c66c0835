"""Video datasets: PyAV-decoded folders (a tiny test video written with PyAV), frame-image folders, CSV
lists, the moving-digits motion dataset, and the bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.data.datasets import CORRUPT_TARGET
from unireplknet.data.video import DIRECTIONS, MovingDigits, VideoClipDataset, decode_video
from unireplknet.errors import UserError

av = pytest.importorskip("av", reason="PyAV is in the 'video' extra")


def write_video(path: Path, n: int, size: int = 16) -> None:
    """n frames, frame t a flat grey of level 16·t (so decoded frames can be told apart)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 16 * t, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_frames(folder: Path, n: int, size: int = 12) -> None:
    folder.mkdir(parents=True)
    for t in range(n):
        Image.fromarray(np.full((size, size, 3), 20 * t, np.uint8)).save(folder / f"img_{t:05d}.jpg")


def test_pyav_folder(tmp_path: Path) -> None:
    for cls in ("jump", "run"):
        (tmp_path / cls).mkdir()
        write_video(tmp_path / cls / "a.mp4", 8)
    frames = decode_video(tmp_path / "jump" / "a.mp4")
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3)
    assert abs(float(frames[5].mean()) - 80) < 6  # lossy codec: grey levels within a few units
    ds = VideoClipDataset(tmp_path, num_frames=4, size=8)
    assert ds.class_names == ["jump", "run"] and ds.targets == [0, 1]
    clip, label = ds[1]
    assert clip.shape == (4, 3, 8, 8) and label == 1
    levels = (clip.mean(dim=(1, 2, 3)) * 0.5 + 0.5) * 255  # un-normalize: uniform frames 1, 3, 5, 7
    assert torch.allclose(levels, torch.tensor([16.0, 48.0, 80.0, 112.0]), atol=6)


def test_frame_folders_and_csv(tmp_path: Path) -> None:
    write_frames(tmp_path / "data" / "wave" / "clip1", 6)
    write_frames(tmp_path / "data" / "clap" / "clip2", 4)
    ds = VideoClipDataset(tmp_path / "data", num_frames=2, size=6)
    assert ds.class_names == ["clap", "wave"]
    clip, label = ds[1]
    assert clip.shape == (2, 3, 6, 6) and label == 1
    levels = (clip.mean(dim=(1, 2, 3)) * 0.5 + 0.5) * 255  # uniform sampling of 6 frames: 1 and 4
    assert torch.allclose(levels, torch.tensor([20.0, 80.0]), atol=3)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\ndata/wave/clip1,wave\ndata/clap/clip2,clap\n")
    ds2 = VideoClipDataset(csv, num_frames=2, size=6, class_names=["clap", "wave"])
    assert ds2.targets == [1, 0]
    train = VideoClipDataset(csv, num_frames=4, size=6, train=True)
    assert train[0][0].shape == (4, 3, 6, 6)


def test_bad_videos(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.mp4").write_bytes(b"\x00not a video at all")
    with pytest.raises(UserError, match="cannot decode video"):
        VideoClipDataset(tmp_path, num_frames=2, size=8)
    short = tmp_path / "short"
    (short / "a").mkdir(parents=True)
    write_video(short / "a" / "v.mp4", 3)
    with pytest.raises(UserError, match="fewer than the 4"):
        VideoClipDataset(short, num_frames=4, size=8)
    ds = VideoClipDataset(short, num_frames=4, size=8, probe=0)  # found later: skipped like a corrupt image
    clip, label = ds[0]
    assert label == CORRUPT_TARGET and clip.shape == (4, 3, 8, 8)
    with pytest.raises(UserError, match="no clips"):
        VideoClipDataset(tmp_path / "a", num_frames=2)


def test_moving_digits_motion_decides() -> None:
    ds = MovingDigits("val", num_frames=4, size=24, total_frames=8, per_class=3)
    assert len(ds) == 3 * len(DIRECTIONS)
    clip, label = ds[5]
    assert clip.shape == (4, 3, 24, 24) and torch.equal(clip, ds[5][0])  # held-out clips are fixed
    for i in range(len(ds)):  # the centre of mass moves in the class direction
        clip, label = ds[i]
        img = clip[:, 0].clamp(min=0)
        ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
        cx = (img * xs).sum((1, 2)) / img.sum((1, 2))
        cy = (img * ys).sum((1, 2)) / img.sum((1, 2))
        dx, dy = DIRECTIONS[label]
        move = torch.tensor([float(cx[-1] - cx[0]), float(cy[-1] - cy[0])])
        assert move @ torch.tensor([float(dx), float(dy)]) > 2
    train = MovingDigits("train", num_frames=4, size=24, per_class=2)
    a, b = train[0], train[0]
    assert a[0].shape == (4, 3, 24, 24) and not torch.equal(a[0], b[0])  # fresh clips in training
