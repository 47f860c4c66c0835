"""`unireplknet bench` and `unireplknet erf` end to end on tiny models."""

from __future__ import annotations

import json

from PIL import Image

from unireplknet.cli.main import main

TINY = '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": 13}'


def test_bench_training_vs_deploy(capsys, tmp_path):
    code = main(["bench", "--model", "unireplknet_a", "--model-kwargs", TINY, "--batch-size", "2",
                 "--img-size", "64", "--warmup", "1", "--iters", "2", "--device", "cpu",
                 "--output", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch_size"] == 2 and report["img_size"] == 64 and report["device"] == "cpu"
    for form in ("training", "deploy"):
        assert report[form]["images_per_s"] > 0 and report[form]["latency_ms_median"] > 0
    assert report["deploy"]["params"] < report["training"]["params"]  # BNs and dilated branches merged
    assert report["deploy_speedup"] > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == report


def test_erf_kernel_13_vs_3(capsys, tmp_path):
    code = main(["erf", "--model", "unireplknet_a", "--model-kwargs", TINY, "--kernel-size", "13",
                 "--kernel-size", "3", "--num-images", "2", "--img-size", "256", "--output", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    large, small = report["area_ratio"]["unireplknet_a K=13"], report["area_ratio"]["unireplknet_a K=3"]
    assert list(large) == ["20%", "30%", "50%", "99%"]
    for t in large:
        assert large[t] > small[t], (t, large, small)
    assert all(0 < v <= 1 for v in large.values()) and large["20%"] <= large["99%"]
    with Image.open(tmp_path / "erf.png") as img:
        assert img.format == "PNG"
    assert json.loads((tmp_path / "erf.json").read_text()) == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erf.json", "erf.png"]


def test_erf_from_images_folder(capsys, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    code = main(["erf", "--model", "unireplknet_a", "--model-kwargs", TINY, "--data", str(tmp_path / "imgs"),
                 "--img-size", "64", "--output", str(tmp_path / "out")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == str(tmp_path / "imgs") and list(report["area_ratio"]) == ["unireplknet_a"]
