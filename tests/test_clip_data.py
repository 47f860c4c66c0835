"""Caption data for CLIP: the generated shapes (deterministic, held-out classes, captions that say what is drawn),
OpenCLIP's CSV and caption folders (fixtures in the real formats, bad input as one line), and the retrieval /
zero-shot metrics against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unireplknet.data.captions import (
    COLOURS,
    HELD_OUT,
    NO_CLASS,
    SHAPES,
    ShapeCaptions,
    all_classes,
    check_classes,
    read_captions,
)
from unireplknet.errors import UserError

SEEN = [c for c in all_classes() if c not in HELD_OUT]
as_array = lambda img: np.asarray(img, dtype=np.float32)  # noqa: E731
split = lambda texts: [t.split() for t in texts]  # noqa: E731 (a word "tokenizer": readable captions)


def _dataset(n: int, classes: list[str], seed: int = 0, groups: int = 2, stream: int = 0) -> ShapeCaptions:
    return ShapeCaptions(n, classes, 48, seed, split, as_array, max_groups=groups, stream=stream)


def test_generated_samples_are_deterministic_by_seed() -> None:
    a, b, c = _dataset(8, SEEN), _dataset(8, SEEN), _dataset(8, SEEN, seed=1)
    for i in range(8):
        (img_a, cap_a, lab_a), (img_b, cap_b, lab_b) = a.sample(i), b.sample(i)
        assert cap_a == cap_b and lab_a == lab_b and np.array_equal(as_array(img_a), as_array(img_b))
    assert [a.sample(i)[1] for i in range(8)] != [c.sample(i)[1] for i in range(8)]
    image, target = a[0]
    assert image.shape == (48, 48, 3) and target["text"] == a.sample(0)[1].split()


def test_captions_name_what_is_drawn_and_held_out_classes_stay_out() -> None:
    """Single-group images: the label is the caption's class, and the brightest pixels have the caption's
    colour; the training split never names a held-out class."""
    test = _dataset(40, list(HELD_OUT), groups=1, stream=2)
    palette = np.array(list(COLOURS.values()), np.float32)
    for i in range(len(test)):
        img, caption, label = test.sample(i)
        colour, shape = HELD_OUT[label].split()
        assert f"{colour} {shape}" in caption
        pixels = as_array(img).reshape(-1, 3)
        drawn = pixels[pixels.sum(1) > np.sort(pixels.sum(1))[-12] - 1]  # the brightest pixels: the objects
        nearest = np.linalg.norm(palette[None] - drawn.mean(0)[None, None], axis=-1).argmin()
        assert list(COLOURS)[nearest] == colour, (caption, drawn.mean(0))
    train = _dataset(300, SEEN)
    held_words = [f"{c} {s}" for c, s in map(str.split, HELD_OUT)]
    for i in range(len(train)):
        _, caption, label = train.sample(i)
        assert not any(h in caption or f"{h}s" in caption for h in held_words), caption
        assert label == NO_CLASS or SEEN[label] in caption
    assert any(" and " in train.sample(i)[1] for i in range(20))  # two groups per image happen


def test_shape_twins_differ_in_one_shape_only() -> None:
    """A twin keeps the caption's words but one shape (same colour: a seen class), and its image differs."""
    twins = ShapeCaptions(30, SEEN, 48, 0, split, lambda img: torch.from_numpy(as_array(img)), twins=True)
    shape_words = set(SHAPES) | {s + ("es" if s.endswith("s") else "s") for s in SHAPES}
    changed = 0
    for i in range(len(twins)):
        (img, cap, lab), (img2, cap2, lab2) = twins.sample(i), twins.sample(i, twin=True)
        diff = [(a, b) for a, b in zip(cap.split(), cap2.split()) if a != b]
        assert len(cap.split()) == len(cap2.split()) and len(diff) == 1, (cap, cap2)
        assert diff[0][0] in shape_words and diff[0][1] in shape_words
        assert (lab == NO_CLASS) == (lab2 == NO_CLASS) and (lab == NO_CLASS or SEEN[lab2].split()[1] in cap2)
        changed += int(not np.array_equal(as_array(img), as_array(img2)))
    assert changed == len(twins)
    images, target = twins[3]
    assert images.shape == (2, 48, 48, 3)
    assert torch.equal(images[1], torch.from_numpy(as_array(twins.sample(3, True)[0])))
    assert target["text"] == [twins.sample(3)[1].split(), twins.sample(3, True)[1].split()]
    assert target["label"].shape == (2,)


def test_held_out_classes_are_checked() -> None:
    assert len(SEEN) == len(COLOURS) * len(SHAPES) - len(HELD_OUT)
    assert check_classes(["red circle", "red circle"]) == ["red circle"]
    with pytest.raises(UserError, match="pink circle"):
        check_classes(["pink circle"])


def _png(path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


def test_openclip_csv_and_caption_folder(tmp_path) -> None:
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.jpg")
    (tmp_path / "train.csv").write_text("filepath\ttitle\nimg/a.png\ta red box\nimg/b.jpg\t  two dogs \n")
    items = read_captions(tmp_path / "train.csv")
    assert [(p.name, c) for p, c in items] == [("a.png", "a red box"), ("b.jpg", "two dogs")]
    (tmp_path / "custom.csv").write_text("caption,path\nsome text,img/a.png\n")
    assert read_captions(tmp_path / "custom.csv", ",", "path", "caption")[0][1] == "some text"
    (tmp_path / "img" / "a.txt").write_text("a red box\n")
    (tmp_path / "img" / "b.txt").write_text("two dogs")
    assert [c for _, c in read_captions(tmp_path / "img")] == ["a red box", "two dogs"]


@pytest.mark.parametrize("case", ["missing_image", "empty_caption", "no_column", "no_txt", "empty_txt", "nowhere",
                                  "binary_csv"])
def test_bad_caption_data_is_one_line_naming_the_file(tmp_path, case: str) -> None:
    _png(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "a.txt").write_text("fine")
    csv = tmp_path / "data.csv"
    source, needle = {
        "missing_image": ("filepath\ttitle\nimg/a.png\tok\nimg/gone.png\tok\n", "data.csv:3: image"),
        "empty_caption": ("filepath\ttitle\nimg/a.png\t  \n", "data.csv:2: empty caption"),
        "no_column": ("path\ttitle\nimg/a.png\tok\n", "no column 'filepath'"),
        "no_txt": (None, "has no caption file 'b.txt'"),
        "empty_txt": (None, "b.txt' is empty"),
        "nowhere": (None, "does not exist"),
        "binary_csv": (b"\xff\xfe\x00\x81filepath", "as a UTF-8 CSV"),
    }[case]
    if source is not None:
        csv.write_bytes(source if isinstance(source, bytes) else source.encode())
        target = csv
    elif case == "nowhere":
        target = tmp_path / "nowhere"
    else:
        _png(tmp_path / "img" / "b.png")
        if case == "empty_txt":
            (tmp_path / "img" / "b.txt").write_text(" \n")
        target = tmp_path / "img"
    with pytest.raises(UserError) as err:
        read_captions(target)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_undecodable_image_is_one_line_naming_the_file(tmp_path) -> None:
    """An image that exists but cannot be decoded stops the run when it is read (not a silently shorter batch)."""
    from unireplknet.data.captions import CaptionFiles

    _png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = CaptionFiles([(tmp_path / "ok.png", "fine"), (tmp_path / "broken.png", "broken")], split, as_array, "x.csv")
    image, target = data[0]
    assert image.shape == (16, 20, 3) and target == {"text": ["fine"], "label": NO_CLASS}
    with pytest.raises(UserError) as err:
        data[1]
    assert "broken.png" in str(err.value) and "x.csv" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no image with a caption"):
        CaptionFiles([], split, as_array, "empty.csv")


def test_retrieval_sums_and_loss_match_brute_force() -> None:
    from unireplknet.tasks.clip import retrieval_sums

    g = torch.Generator().manual_seed(0)
    for n, e in ((7, 4), (30, 8)):
        q = torch.nn.functional.normalize(torch.randn(n, e, generator=g), dim=-1)
        k = torch.nn.functional.normalize(torch.randn(n, e, generator=g), dim=-1)
        ids = torch.randint(0, n // 2, (n,), generator=g)  # repeated captions
        got = retrieval_sums(q, k, ids, scale=5.0, ks=(1, 3), chunk=4)
        sim = (q @ k.T).double().tolist()
        ce = sum(-np.log(np.exp(5 * sim[i][i]) / sum(np.exp(5 * s) for s in sim[i])) for i in range(n))
        hits = []
        for kk in (1, 3):
            hits.append(sum(any(ids[j] == ids[i] for j in sorted(range(n), key=lambda j: -sim[i][j])[:kk])
                            for i in range(n)))
        assert got[0] == pytest.approx(ce, rel=1e-5) and got[1:] == hits
