"""Time-series forecasting (paper §3.3 eq. 2, Table 12): a window of L steps of D variables -> the next
``pred_len`` steps of every variable, through the Corrformer-style embedder, the unchanged UniRepLKNet
(``in_chans=1``, no classifier) and a forecasting head (:mod:`unireplknet.modalities.timeseries`).

Data: station CSV files (``--data FILE|DIR``, ``task_args.time_col`` / ``task_args.variables``) or the
embedded pvlib weather (``--data weather``, the default). Training minimizes the MSE of the standardized
values; metrics (MSE, MAE per variable) are reported on the original scale, next to the persistence,
24-hour seasonal-naive and ridge baselines computed on the same test windows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from unireplknet.errors import UserError
from unireplknet.tasks.audio import _backbone_kwargs, build_backbone
from unireplknet.tasks.base import Task, TaskData, best_and_deploy, task_args, write_summary

log = logging.getLogger(__name__)

EMBEDDED = "weather"
DEFAULTS: dict[str, Any] = {
    "seq_len": 48, "pred_len": 24, "d_model": 64, "n_nodes": None,  # None: one node per station
    "time_col": "timestamp", "variables": None,  # CSV data: the columns to forecast (None: weather's)
    "split": [0.7, 0.1, 0.2], "ridge_alpha": 1.0, "season": 24, "head_dropout": 0.1,
    "time_features": ["hour", "weekday", "day", "yearday"],  # calendar inputs of the temporal embedding
    "init_linear": True,  # start the head's linear shortcut at the ridge fit on the training windows
    "train_stride": 1,  # every train_stride-th training window per epoch (hourly windows overlap heavily)
}


class ForecastTask(Task):
    name = "forecast"
    primary_metric = "val_mse"
    mode = "min"
    default_config = "forecast_default"

    def build_data(self, cfg: Any) -> TaskData:
        from unireplknet.data.timeseries import (
            WEATHER_VARS,
            WindowDataset,
            chronological_split,
            load_csv_stations,
            load_pvlib_weather,
            time_features,
        )

        a = task_args(cfg, DEFAULTS)
        variables = list(a["variables"] or WEATHER_VARS)
        if cfg.data in (None, EMBEDDED):
            series = load_pvlib_weather(variables)
        else:
            series = load_csv_stations(Path(cfg.data), a["time_col"], variables)
        seq_len, pred_len = int(a["seq_len"]), int(a["pred_len"])
        ranges = chronological_split(len(series.values), seq_len, pred_len, tuple(a["split"]))
        train_end = ranges["train"][1] + seq_len + pred_len - 1  # steps whose values training sees
        mean = series.values[:train_end].mean(axis=0)
        std = series.values[:train_end].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        values = (series.values - mean) / std
        marks = time_features(series.timestamps, list(a["time_features"]))
        strides = {"train": int(a["train_stride"]), "val": 1, "test": 1}
        sets = {k: WindowDataset(values, marks, seq_len, pred_len, *r, stride=strides[k]) for k, r in ranges.items()}
        n_nodes = int(a["n_nodes"] or len(series.stations))
        if len(series.columns) % n_nodes:
            raise UserError(f"{len(series.columns)} series columns cannot be split into {n_nodes} nodes; set "
                            "task_args.n_nodes to a divisor")
        info = {"columns": series.columns, "variables": series.variables, "stations": series.stations,
                "mean": mean.tolist(), "std": std.tolist(), "n_nodes": n_nodes, "args": a,
                "ranges": {k: list(v) for k, v in ranges.items()}}
        log.info("forecast data: %d stations x %d variables, %d steps; %d / %d / %d train / val / test windows",
                 len(series.stations), len(variables), len(values), len(sets["train"]), len(sets["val"]),
                 len(sets["test"]))
        return TaskData(train=sets["train"], val=sets["val"], test=sets["test"], info=info)

    def check_resume(self, meta: dict[str, Any], data: TaskData, path: Any, cfg: Any) -> None:
        super().check_resume(meta, data, path, cfg)
        if list(meta.get("columns", [])) != data.info["columns"]:
            raise UserError(f"'{path}' was trained on other series columns; resume with the same data")

    def _specs(self, cfg: Any, data: TaskData) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        a, d = data.info["args"], len(data.info["columns"])
        backbone = _backbone_kwargs(cfg, 0, 1)
        emb = {"n_vars": d, "n_nodes": data.info["n_nodes"], "seq_len": int(a["seq_len"]),
               "d_model": int(a["d_model"]), "n_time_feats": len(a["time_features"])}
        head = {"n_vars": d, "n_nodes": data.info["n_nodes"], "seq_len": int(a["seq_len"]),
                "pred_len": int(a["pred_len"]), "feat_dim": int(backbone["dims"][-1]),
                "dropout": float(a["head_dropout"])}
        return backbone, emb, head

    def build_model(self, cfg: Any, data: TaskData) -> nn.Module:
        from unireplknet.modalities.timeseries import CorrformerEmbedder, ForecastHead
        from unireplknet.models.multimodal import EmbedderModel

        backbone, emb, head = self._specs(cfg, data)
        model = EmbedderModel(CorrformerEmbedder(**emb), build_backbone(cfg, backbone), ForecastHead(**head))
        if data.info["args"]["init_linear"]:  # start the shortcut at the ridge fit (the linear baseline)
            from unireplknet.data.timeseries import RidgeBaseline

            ridge = RidgeBaseline(float(data.info["args"]["ridge_alpha"])).fit(*data.train.arrays())
            model.head.init_linear(torch.as_tensor(ridge.coef, dtype=torch.float32))
        if cfg.finetune:
            from unireplknet.engine.checkpoint import load_run_checkpoint
            from unireplknet.models.checkpoint import load_checkpoint

            load_checkpoint(model, load_run_checkpoint(cfg.finetune), strict=True)
        return model

    def build_losses(self, cfg: Any, data: TaskData, mixup_active: bool) -> tuple[nn.Module, nn.Module]:
        return nn.MSELoss(), nn.MSELoss()

    def build_meta(self, cfg: Any, data: TaskData, deploy: bool = False) -> dict[str, Any]:
        backbone, emb, head = self._specs(cfg, data)
        a = data.info["args"]
        return {"task": self.name, "model": None, "model_kwargs": backbone, "deploy": deploy,
                "embedder": {"name": "corrformer", "kwargs": emb}, "head": {"name": "forecast", "kwargs": head},
                "columns": data.info["columns"], "variables": data.info["variables"],
                "mean": data.info["mean"], "std": data.info["std"], "seq_len": int(a["seq_len"]),
                "pred_len": int(a["pred_len"]), "time_col": a["time_col"],
                "input_size": [int(a["seq_len"]), len(data.info["columns"]) + len(a["time_features"])],
                "task_args": dict(a), "data": cfg.data}

    def model_label(self, cfg: Any) -> str:
        from unireplknet.tasks.classification import model_label

        return f"Corrformer embedding + {model_label(cfg)}"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, limit_batches: int | None = None) -> dict[str, Any]:
        """MSE and MAE of the standardized values, over all variables and horizons (every rank's shard)."""
        from unireplknet.engine.distributed import all_reduce_sum
        from unireplknet.engine.loops import autocast

        model.eval()
        se = ae = 0.0
        n = 0
        for i, (x, y) in enumerate(loader):
            if limit_batches and i >= limit_batches:
                break
            x, y = x.to(device), y.to(device)
            with autocast(device, amp):
                pred = model(x)
            err = pred.float() - y
            se += float(err.pow(2).sum())
            ae += float(err.abs().sum())
            n += err.numel()
        se, ae, n = all_reduce_sum([se, ae, n], device)
        mse = se / max(n, 1)
        return {"val_mse": mse, "val_mae": ae / max(n, 1), "val_loss": mse, "val_samples": int(n)}

    def epoch_line(self, row: dict[str, Any]) -> str:
        return f"val_mse {row['val_mse']:.4f}  val_mae {row['val_mae']:.4f} (standardized)"

    @torch.no_grad()
    def predict(self, model: nn.Module, dataset: Any, batch_size: int, device: torch.device) -> np.ndarray:
        """Standardized forecasts of every window of ``dataset`` -> (N, P, D) float64."""
        model.eval()
        out = [model(x.to(device)).double().cpu().numpy()
               for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
        return np.concatenate(out)

    def finalize(self, *, cfg: Any, model: nn.Module, meta: dict[str, Any], data: TaskData, run_dir: Path,
                 state: Any, device: torch.device, t_start: float, progress: bool,
                 world_size: int = 1) -> dict[str, Any]:
        a = data.info["args"]
        model, deploy, paths = best_and_deploy(model, meta, run_dir, device)
        test, beats, ours, y_test = self.test_table(model, data, cfg.batch_size, device)
        ours_deploy = self.predict(deploy, data.test, cfg.batch_size, device)
        summary: dict[str, Any] = {
            "status": "completed", "task": self.name, "model": self.model_label(cfg), "data": cfg.data,
            "seq_len": int(a["seq_len"]), "pred_len": int(a["pred_len"]), "stations": data.info["stations"],
            "test": test, "beats_best_baseline": beats, "test_windows": int(len(y_test)),
            "test_mse_standardized": float(np.mean((ours - y_test) ** 2)),
            "best_epoch": state.best_epoch, "epochs": state.epoch, "steps": state.step,
            "world_size": world_size, "global_batch": cfg.global_batch(world_size),
            "deploy_max_abs_diff": float(np.abs(ours - ours_deploy).max()),
            "wall_time_s": round(time.time() - t_start, 1), "paths": paths,
        }
        return write_summary(summary, run_dir)

    def test_table(self, model: nn.Module, data: TaskData, batch_size: int,
                   device: torch.device) -> tuple[dict[str, Any], dict[str, bool], np.ndarray, np.ndarray]:
        """Per-variable test MSE/MAE (original scale) of the model and the three baselines, whether the model
        beats the best baseline's MSE per variable, and the standardized forecasts and targets."""
        from unireplknet.data.timeseries import RidgeBaseline, per_variable_errors, persistence, seasonal_naive

        a = data.info["args"]
        x_test, y_test = data.test.arrays()
        x_train, y_train = data.train.arrays()
        ours = self.predict(model.to(device), data.test, batch_size, device)
        pred_len = int(a["pred_len"])
        preds = {
            "ours": ours,
            "persistence": persistence(x_test, pred_len),
            "seasonal_naive": seasonal_naive(x_test, pred_len, int(a["season"])),
            "linear": RidgeBaseline(float(a["ridge_alpha"])).fit(x_train, y_train).predict(x_test),
        }
        scale = np.asarray(data.info["std"])
        cols, variables = data.info["columns"], data.info["variables"]
        errors = {name: per_variable_errors(p, y_test, scale, cols, variables) for name, p in preds.items()}
        test = {var: {name: errors[name][var] for name in preds} for var in variables}
        beats = {}
        for var in variables:
            best_base = min(test[var][b]["mse"] for b in preds if b != "ours")
            beats[var] = test[var]["ours"]["mse"] < best_base
        return test, beats, ours, y_test

    def print_summary(self, summary: dict[str, Any]) -> None:
        print("\n" + f"Training finished: {summary['model']} on {summary['data']}, {summary['epochs']} epochs, "
              f"{summary['steps']} steps, {summary['wall_time_s']:.0f} s")
        print(format_table(summary["test"]))
        print(f"  deploy form: max |diff| {summary['deploy_max_abs_diff']:.2e}; run folder: "
              f"{summary['paths']['run_dir']}  (summary.json)")


def format_table(test: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per variable, MSE / MAE of ours and of each baseline (original scale)."""
    methods = list(next(iter(test.values())))
    head = "| variable | " + " | ".join(f"{m} MSE | {m} MAE" for m in methods) + " |"
    rule = "|---|" + "---:|" * (2 * len(methods))
    rows = [f"| {var} | " + " | ".join(f"{r[m]['mse']:.3f} | {r[m]['mae']:.3f}" for m in methods) + " |"
            for var, r in test.items()]
    return "\n".join([head, rule, *rows])
