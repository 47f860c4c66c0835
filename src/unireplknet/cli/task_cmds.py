"""`eval` / `predict` for checkpoints of non-image tasks (``meta['task']`` is ``audio`` or ``forecast``).

``eval``: the task's test-split metrics on ``--data`` (the embedded dataset when it is the task's name):
top-1/top-5 for audio, per-variable MSE/MAE with the baselines for forecasting. ``predict``: audio files
-> top-k labels; a station CSV file or folder -> the next ``pred_len`` steps after its last timestamp.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unireplknet.errors import UserError

IMAGE_TASKS = (None, "classification")


def checkpoint_task(path: str | None) -> str | None:
    """The ``task`` recorded in a checkpoint's meta (``None``: an image/official checkpoint or no file)."""
    if path is None or not Path(path).is_file():
        return None
    from unireplknet.models.checkpoint import read_checkpoint

    meta = read_checkpoint(path).get("meta")
    return meta.get("task") if isinstance(meta, Mapping) else None


def _task_config(meta: Mapping[str, Any], data: str | None) -> Any:
    from unireplknet.engine.config import make_config

    return make_config({"task": meta["task"], "task_args": dict(meta.get("task_args") or {}), "model": None,
                        "arch": dict(meta.get("model_kwargs") or {}), "in_chans": 1, "mean": [0.0],
                        "std": [1.0], "data": data or meta.get("data")})


def run_eval(args: argparse.Namespace, model: nn.Module, meta: Mapping[str, Any],
             device: torch.device) -> dict[str, Any]:
    from unireplknet.tasks import get_task

    task = get_task(meta["task"])
    data = task.build_data(_task_config(meta, args.data))
    if meta["task"] == "forecast":
        if list(data.info["columns"]) != list(meta.get("columns", [])):
            raise UserError(f"--data gives columns {data.info['columns']}, the checkpoint forecasts "
                            f"{meta.get('columns')}; evaluate on the stations it was trained on")
        test, beats, _, y = task.test_table(model, data, args.batch_size, device)  # type: ignore[attr-defined]
        from unireplknet.tasks.forecast import format_table

        print(format_table(test))
        return {"task": "forecast", "test": test, "beats_best_baseline": beats, "test_windows": int(len(y))}
    if list(data.info["class_names"]) != list(meta.get("class_names", [])):
        raise UserError(f"--data has classes {data.info['class_names']}, the checkpoint "
                        f"{meta.get('class_names')}; evaluate on the classes it was trained on")
    return {"task": meta["task"], **task.test_metrics(model, data, args.batch_size, device)}  # type: ignore


def run_predict(args: argparse.Namespace, model: nn.Module, meta: Mapping[str, Any],
                device: torch.device) -> list[dict[str, Any]] | dict[str, Any]:
    model.eval().to(device)
    if meta["task"] == "audio":
        return _predict_audio(args, model, meta, device)
    if meta["task"] == "forecast":
        return _predict_forecast(args, model, meta, device)
    raise UserError(f"predict does not support task '{meta['task']}' yet")


def _predict_audio(args: argparse.Namespace, model: nn.Module, meta: Mapping[str, Any],
                   device: torch.device) -> list[dict[str, Any]]:
    from unireplknet.data.audio import AUDIO_SUFFIXES, fix_length, read_audio

    files: list[Path] = []
    for text in args.images:
        p = Path(text)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"audio file '{p}' does not exist; check the path")
    if not files:
        raise UserError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) given")
    sr, clip = int(meta["sample_rate"]), int(meta["input_size"][0])
    waves = [fix_length(read_audio(f, sr), clip) for f in files]
    names = list(meta["class_names"])
    out = []
    with torch.inference_mode():
        for start in range(0, len(files), args.batch_size):
            batch = torch.from_numpy(np.stack(waves[start:start + args.batch_size])).to(device)
            probs = model(batch).float().softmax(1).cpu()
            k = min(args.topk, probs.shape[1])
            vals, idxs = probs.topk(k, dim=1)
            for f, v, i in zip(files[start:start + args.batch_size], vals.tolist(), idxs.tolist()):
                out.append({"file": str(f), "predictions": [{"label": names[j], "index": j, "probability": p}
                                                            for p, j in zip(v, i)]})
    return out


def _predict_forecast(args: argparse.Namespace, model: nn.Module, meta: Mapping[str, Any],
                      device: torch.device) -> dict[str, Any]:
    import pandas as pd

    from unireplknet.data.timeseries import TIME_FEATURES, load_csv_stations, time_features

    if len(args.images) != 1:
        raise UserError("forecast predict takes one CSV file or one folder of station CSVs")
    variables = list(meta["variables"])
    series = load_csv_stations(Path(args.images[0]), meta.get("time_col", "timestamp"), variables)
    if series.columns != list(meta["columns"]):
        raise UserError(f"the CSV data gives columns {series.columns}, the checkpoint forecasts "
                        f"{meta['columns']}; pass the stations it was trained on")
    seq_len, pred_len = int(meta["seq_len"]), int(meta["pred_len"])
    if len(series.values) < seq_len:
        raise UserError(f"the series has {len(series.values)} steps; the model needs the last {seq_len}")
    mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
    ts = pd.DatetimeIndex(series.timestamps)
    step = ts[-1] - ts[-2]
    names = (meta.get("task_args") or {}).get("time_features", TIME_FEATURES)
    marks = time_features(series.timestamps[-seq_len:], names)
    x = np.concatenate([(series.values[-seq_len:] - mean) / std, marks], 1)
    with torch.inference_mode():
        y = model(torch.as_tensor(x, dtype=torch.float32)[None].to(device))[0].double().cpu().numpy()
    y = y * std + mean
    future = [str(ts[-1] + step * (h + 1)) for h in range(pred_len)]
    return {"columns": series.columns, "timestamps": future, "forecast": y.tolist()}
