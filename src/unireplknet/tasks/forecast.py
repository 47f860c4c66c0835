"""Time-series forecasting (paper §3.3 eq. 2, Table 12): a window of L steps of D variables -> the next
``pred_len`` steps of every variable, through the Corrformer-style embedder, the unchanged UniRepLKNet
(``in_chans=1``, no classifier) and a forecasting head (:mod:`unireplknet.modalities.timeseries`).

Data: station CSV files (``--data FILE|DIR``, ``task_args.time_col`` / ``task_args.variables``) or the built-in
pvlib weather (``--data weather``, the default). Training minimizes the MSE of the standardized values; the
summary reports MSE and MAE per variable on the original scale, next to the persistence, 24-hour seasonal-naive
and ridge baselines computed on the same test windows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unireplknet.engine.config import TrainConfig
from unireplknet.engine.distributed import all_reduce_sum
from unireplknet.engine.loops import eval_batches
from unireplknet.engine.task import (
    Criterion,
    EvalContext,
    Request,
    Task,
    TaskData,
    eval_loader,
    outputs_criterion,
)
from unireplknet.errors import UserError
from unireplknet.tasks import register_task
from unireplknet.tasks.classification import backbone_kwargs, build_backbone
from unireplknet.utils.typed import check

log = logging.getLogger(__name__)


@dataclass
class ForecastArgs:
    seq_len: int = 48
    pred_len: int = 24
    d_model: int = 64
    n_nodes: int | None = None  # None: one node per station
    time_col: str = "timestamp"
    variables: list[str] | None = None  # CSV data: the columns to forecast (None: the weather's)
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    ridge_alpha: float = 1.0
    season: int = 24
    head_dropout: float = 0.1
    time_features: list[str] = field(default_factory=lambda: ["hour", "weekday", "day", "yearday"])
    init_linear: bool = True  # start the head's linear shortcut at the ridge fit on the training windows
    train_stride: int = 1  # every train_stride-th training window per epoch (hourly windows overlap heavily)

    def __post_init__(self) -> None:
        check([(self.seq_len >= 2 and self.pred_len >= 1, "seq_len must be >= 2 and pred_len >= 1"),
               (self.d_model >= 1 and self.season >= 1 and self.train_stride >= 1,
                "d_model, season and train_stride must be >= 1"),
               (len(self.split) == 3 and all(f > 0 for f in self.split), "split must be 3 positive fractions"),
               (0 <= self.head_dropout < 1, "head_dropout must be in [0, 1)")])


@register_task
class ForecastTask(Task):
    name = "forecast"
    Args = ForecastArgs
    default_config = "forecast_default"
    builtin_data = ("weather",)
    primary_metric = "mse"
    mode = "min"

    def build_data(self, cfg: TrainConfig, args: ForecastArgs) -> TaskData:
        from unireplknet.data.timeseries import (
            WEATHER_VARS,
            WindowDataset,
            chronological_split,
            load_csv_stations,
            load_pvlib_weather,
            time_features,
        )

        variables = list(args.variables or WEATHER_VARS)
        if cfg.data in (None, *self.builtin_data):
            series = load_pvlib_weather(variables)
        else:
            series = load_csv_stations(Path(cfg.data), args.time_col, variables)
        ranges = chronological_split(len(series.values), args.seq_len, args.pred_len, tuple(args.split))
        train_end = ranges["train"][1] + args.seq_len + args.pred_len - 1  # steps whose values training sees
        mean = series.values[:train_end].mean(axis=0)
        std = series.values[:train_end].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        values = (series.values - mean) / std
        marks = time_features(series.timestamps, args.time_features)
        strides = {"train": args.train_stride, "val": 1, "test": 1}
        sets = {k: WindowDataset(values, marks, args.seq_len, args.pred_len, *r, stride=strides[k])
                for k, r in ranges.items()}
        n_nodes = args.n_nodes or len(series.stations)
        if len(series.columns) % n_nodes:
            raise UserError(f"{len(series.columns)} series columns cannot be split into {n_nodes} nodes; set "
                            "task_args.n_nodes to a divisor")
        log.info("forecast data: %d stations x %d variables, %d steps; %d / %d / %d train / val / test windows",
                 len(series.stations), len(variables), len(values), len(sets["train"]), len(sets["val"]),
                 len(sets["test"]))
        return TaskData(sets["train"], sets["val"], sets["test"],
                        {"columns": series.columns, "variables": series.variables, "stations": series.stations,
                         "mean": mean.tolist(), "std": std.tolist(), "n_nodes": n_nodes})

    def resume_mismatch(self, meta: Mapping[str, Any], data: TaskData) -> str | None:
        if list(meta.get("columns", [])) != list(data.info["columns"]):
            return f"it forecasts the columns {meta.get('columns')}, the data has {data.info['columns']}"
        return None

    def model_meta(self, cfg: TrainConfig, args: ForecastArgs, data: TaskData) -> dict[str, Any]:
        d, nodes = len(data.info["columns"]), data.info["n_nodes"]
        backbone = backbone_kwargs(cfg, 0, 1)
        embedder = {"n_vars": d, "n_nodes": nodes, "seq_len": args.seq_len, "d_model": args.d_model,
                    "n_time_feats": len(args.time_features)}
        head = {"n_vars": d, "n_nodes": nodes, "seq_len": args.seq_len, "pred_len": args.pred_len,
                "feat_dim": int(backbone["dims"][-1]), "dropout": args.head_dropout}
        return {"model": None, "model_kwargs": backbone, "embedder": {"name": "corrformer", "kwargs": embedder},
                "head": {"name": "forecast", "kwargs": head}, "columns": data.info["columns"],
                "variables": data.info["variables"], "mean": data.info["mean"], "std": data.info["std"],
                "seq_len": args.seq_len, "pred_len": args.pred_len, "time_col": args.time_col,
                "input_size": [args.seq_len, d + len(args.time_features)]}

    def build_model(self, cfg: TrainConfig, args: ForecastArgs, data: TaskData) -> nn.Module:
        from unireplknet.models import load_checkpoint
        from unireplknet.models.multimodal import build_embedder_model

        meta = self.model_meta(cfg, args, data)
        model = build_embedder_model(meta, build_backbone(cfg, meta["model_kwargs"]))
        if args.init_linear:  # start the shortcut at the ridge fit (the linear baseline)
            from unireplknet.data.timeseries import RidgeBaseline

            ridge = RidgeBaseline(args.ridge_alpha).fit(*data.train.arrays())
            model.head.init_linear(torch.as_tensor(ridge.coef, dtype=torch.float32))
        if cfg.finetune:
            load_checkpoint(model, cfg.finetune, strict=True)
        return model

    def criterion(self, cfg: TrainConfig, args: ForecastArgs, data: TaskData) -> Criterion:
        return outputs_criterion(nn.MSELoss())

    def model_label(self, cfg: TrainConfig) -> str:
        return f"Corrformer embedding + {super().model_label(cfg)}"

    def evaluate(self, model: nn.Module, loader: Any, ctx: EvalContext) -> dict[str, Any]:
        """MSE and MAE of the standardized values over all variables and horizons."""
        se = ae = n = 0.0
        for pred, _, y in eval_batches(model, loader, ctx):
            err = pred.float() - y
            se, ae, n = se + float(err.pow(2).sum()), ae + float(err.abs().sum()), n + err.numel()
        if ctx.distributed:
            se, ae, n = all_reduce_sum([se, ae, n], ctx.device)
        return {"mse": se / max(n, 1), "mae": ae / max(n, 1), "loss": se / max(n, 1), "samples": int(n)}

    @torch.no_grad()
    def forecasts(self, model: nn.Module, dataset: Any, batch_size: int, device: torch.device) -> np.ndarray:
        """Standardized forecasts of every window of ``dataset`` -> (N, P, D) float64."""
        model.eval().to(device)
        return np.concatenate([model(x.to(device)).double().cpu().numpy()
                               for x, _ in eval_loader(dataset, batch_size)])

    def test_table(self, model: nn.Module, args: ForecastArgs, data: TaskData, batch_size: int,
                   device: torch.device) -> dict[str, Any]:
        """Per-variable test MSE/MAE (original scale) of the model and the three baselines, and whether the model
        beats the best baseline's MSE per variable."""
        from unireplknet.data.timeseries import RidgeBaseline, per_variable_errors, persistence, seasonal_naive

        x_test, y_test = data.test.arrays()
        preds = {"ours": self.forecasts(model, data.test, batch_size, device),
                 "persistence": persistence(x_test, args.pred_len),
                 "seasonal_naive": seasonal_naive(x_test, args.pred_len, args.season),
                 "linear": RidgeBaseline(args.ridge_alpha).fit(*data.train.arrays()).predict(x_test)}
        scale, cols, variables = np.asarray(data.info["std"]), data.info["columns"], data.info["variables"]
        errors = {name: per_variable_errors(p, y_test, scale, cols, variables) for name, p in preds.items()}
        test = {var: {name: errors[name][var] for name in preds} for var in variables}
        beats = {var: test[var]["ours"]["mse"] < min(test[var][b]["mse"] for b in preds if b != "ours")
                 for var in variables}
        return {"test": test, "beats_best_baseline": beats, "test_windows": int(len(y_test)),
                "test_mse_standardized": float(np.mean((preds["ours"] - y_test) ** 2))}

    def extra_summary(self, model: nn.Module, cfg: TrainConfig, args: ForecastArgs, data: TaskData,
                      device: torch.device) -> dict[str, Any]:
        table = self.test_table(model, args, data, cfg.batch_size, device)
        log.info("forecast test errors (original scale):\n%s", format_table(table["test"]))
        return {"seq_len": args.seq_len, "pred_len": args.pred_len, "stations": data.info["stations"], **table}

    def summary_lines(self, summary: Mapping[str, Any]) -> list[str]:
        return [format_table(summary["test"]), f"  test MSE (standardized) {summary['test_mse']:.4f}"]

    def evaluate_checkpoint(self, model: nn.Module, meta: Mapping[str, Any], cfg: TrainConfig,
                            request: Request) -> dict[str, Any]:
        """The held-out MSE/MAE and the per-variable table with the baselines."""
        out = super().evaluate_checkpoint(model, meta, cfg, request)
        data, args = self.checkpoint_data(meta, cfg, request.data)
        return {**out, **self.test_table(model, args, data, request.batch_size, request.device)}

    def predict(self, model: nn.Module, meta: Mapping[str, Any], request: Request) -> dict[str, Any]:
        """The next ``pred_len`` steps after the last timestamp of one station CSV file or a folder of them."""
        import pandas as pd

        from unireplknet.data.timeseries import TIME_FEATURES, load_csv_stations, time_features

        if len(request.inputs) != 1:
            raise UserError("forecast predict takes one CSV file or one folder of station CSVs")
        series = load_csv_stations(Path(request.inputs[0]), meta.get("time_col", "timestamp"), list(meta["variables"]))
        if series.columns != list(meta["columns"]):
            raise UserError(f"the CSV data gives columns {series.columns}, the checkpoint forecasts {meta['columns']}; "
                            "pass the stations it was trained on")
        seq_len, pred_len = int(meta["seq_len"]), int(meta["pred_len"])
        if len(series.values) < seq_len:
            raise UserError(f"the series has {len(series.values)} steps; the model needs the last {seq_len}")
        mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        ts = pd.DatetimeIndex(series.timestamps)
        marks = time_features(series.timestamps[-seq_len:], (meta.get("task_args") or {}).get("time_features",
                                                                                             TIME_FEATURES))
        x = np.concatenate([(series.values[-seq_len:] - mean) / std, marks], 1)
        with torch.inference_mode():
            y = model.eval().to(request.device)(torch.as_tensor(x, dtype=torch.float32)[None].to(request.device))
        y = y[0].double().cpu().numpy() * std + mean
        return {"columns": series.columns, "timestamps": [str(ts[-1] + (ts[-1] - ts[-2]) * (h + 1))
                                                          for h in range(pred_len)], "forecast": y.tolist()}


def format_table(test: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table: one row per variable, MSE / MAE of ours and of each baseline (original scale)."""
    methods = list(next(iter(test.values())))
    head = "| variable | " + " | ".join(f"{m} MSE | {m} MAE" for m in methods) + " |"
    rule = "|---|" + "---:|" * (2 * len(methods))
    rows = [f"| {var} | " + " | ".join(f"{r[m]['mse']:.3f} | {r[m]['mae']:.3f}" for m in methods) + " |"
            for var, r in test.items()]
    return "\n".join([head, rule, *rows])
