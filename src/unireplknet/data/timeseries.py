"""Time-series data for forecasting: stations (CSV files, or the built-in pvlib weather) aligned on their
timestamps, standardized with training statistics, cut into sliding windows, split chronologically; and the
baselines (persistence, seasonal naive, ridge on the window).

A series is ``(T, D)`` with ``D = stations × variables`` (columns ``"<station>/<variable>"``). A sample is
``(x (L, D + M), y (P, D))``: the window's standardized values plus M calendar features (of hour of day,
day of week, day of month, day of year, scaled to [-0.5, 0.5]), and the next ``P`` standardized values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

WEATHER_FILES = ("703165TY.csv", "723170TYA.CSV", "12839.tm2")  # pvlib's bundled TMY files: 3 stations
WEATHER_VARS = ("temp_air", "wind_speed", "relative_humidity", "temp_dew")


@dataclass
class Series:
    """Aligned stations: values (T, D) float64, timestamps (T,) datetime64, column names, variable names."""

    values: np.ndarray
    timestamps: np.ndarray
    columns: list[str]
    variables: list[str]
    stations: list[str]


TIME_FEATURES = ("hour", "weekday", "day", "yearday")


def time_features(timestamps: np.ndarray, names: Sequence[str] = TIME_FEATURES) -> np.ndarray:
    """(T,) datetime64 -> (T, len(names)) float32 calendar features in [-0.5, 0.5]: hour/23, weekday/6,
    (day of month - 1)/30, (day of year - 1)/365."""
    import pandas as pd

    t = pd.DatetimeIndex(timestamps)
    table = {"hour": t.hour / 23.0, "weekday": t.dayofweek / 6.0, "day": (t.day - 1) / 30.0,
             "yearday": (t.dayofyear - 1) / 365.0}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown time feature(s) {', '.join(unknown)}; use some of {', '.join(table)}")
    feats = np.stack([np.asarray(table[n], dtype=np.float64) for n in names], axis=1) if names \
        else np.zeros((len(t), 0))
    return (feats - 0.5).astype(np.float32)


def read_station_csv(path: Path, time_col: str, variables: Sequence[str]):
    """A station's CSV -> DataFrame indexed by time with ``variables``; clear errors for bad files."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"cannot read CSV '{path}' ({str(err).splitlines()[0]}); is it a comma-separated file?") \
            from None
    missing = [c for c in [time_col, *variables] if c not in df.columns]
    if missing:
        raise UserError(f"'{path}' has no column(s) {', '.join(missing)} (it has {', '.join(map(str, df.columns))});"
                        " set task_args.time_col / task_args.variables to its column names")
    try:
        index = pd.to_datetime(df[time_col])
    except (ValueError, TypeError) as err:  # (pandas appends advice about arguments the CLI cannot pass)
        reason = str(err).split(". You might want to try")[0].splitlines()[0]
        raise UserError(f"'{path}': column '{time_col}' is not a timestamp ({reason}); write every row's time "
                        "in one format, e.g. 2020-01-31 13:00") from None
    out = df[list(variables)].apply(pd.to_numeric, errors="coerce")
    out.index = index
    return out


def check_finite(df, name: str) -> None:
    bad = ~np.isfinite(df.to_numpy(dtype=np.float64))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"{name}: {int(bad.sum())} missing or non-numeric values (first: column "
                        f"'{df.columns[col]}' at {df.index[row]}); fill or drop them before training")


def align_stations(frames: dict[str, object], variables: Sequence[str]) -> Series:
    """Inner-join the stations' frames on their timestamps -> one :class:`Series`."""
    import pandas as pd

    for name, df in frames.items():
        check_finite(df, f"station '{name}'")
        if df.index.has_duplicates:
            raise UserError(f"station '{name}' has duplicate timestamps; keep one row per time step")
    joined = pd.concat({name: df.sort_index() for name, df in frames.items()}, axis=1, join="inner")
    if len(joined) == 0:
        raise UserError("the stations share no timestamp; they must cover the same period")
    columns = [f"{s}/{v}" for s, v in joined.columns]
    return Series(values=joined.to_numpy(dtype=np.float64), timestamps=joined.index.to_numpy(),
                  columns=columns, variables=list(variables), stations=list(frames))


def load_csv_stations(root: Path, time_col: str, variables: Sequence[str]) -> Series:
    """``root`` is a CSV file or a folder of CSV files (one per station)."""
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv")
    else:
        raise UserError(f"data '{root}' does not exist; pass a CSV file or a folder of CSV files (one per station), "
                        "or --data weather")
    if not files:
        raise UserError(f"'{root}' holds no .csv files; pass a folder of station CSVs")
    if not variables:
        raise UserError("no variables named; set task_args.variables to the columns to forecast")
    return align_stations({p.stem: read_station_csv(p, time_col, variables) for p in files}, variables)


def load_pvlib_weather(variables: Sequence[str] = WEATHER_VARS) -> Series:
    """The three typical-meteorological-year stations shipped inside pvlib (Sand Point AK, Greensboro NC,
    Miami FL), hourly. A TMY is a typical year stitched from several years' months: the rows of each file are
    re-indexed to one common year (local time, hour 0 of 1 January onwards) so the stations line up."""
    try:
        import pvlib
        from pvlib import iotools
    except ImportError as err:
        raise UserError("the built-in weather data needs pvlib: pip install 'unireplknet[forecast]', or "
                        "pass --data with station CSV files") from err
    import pandas as pd

    root = Path(pvlib.__file__).parent / "data"
    tmy2_names = {"temp_air": "DryBulb", "wind_speed": "Wspd", "relative_humidity": "RHum",
                  "pressure": "Pressure", "temp_dew": "DewPoint", "ghi": "GHI"}
    frames = {}
    for name in WEATHER_FILES:
        if name.endswith(".tm2"):
            df, meta = iotools.read_tmy2(str(root / name))
            df = df.rename(columns={v: k for k, v in tmy2_names.items()})
            for col in ("temp_air", "temp_dew", "wind_speed"):  # TMY2 stores tenths of degC and m/s
                df[col] = df[col] / 10.0
            station = str(meta.get("City", name)).title()
        else:
            df, meta = iotools.read_tmy3(str(root / name), coerce_year=2001, map_variables=True)
            station = str(meta.get("Name", name)).strip('"').title()
        missing = [v for v in variables if v not in df.columns]
        if missing:
            raise UserError(f"the pvlib weather files have no {', '.join(missing)}; choose from "
                            f"{', '.join(tmy2_names)}")
        frame = df[list(variables)].astype(np.float64).reset_index(drop=True)
        frame.index = pd.date_range("2001-01-01 00:00", periods=len(frame), freq="h")
        frames[station] = frame
    return align_stations(frames, variables)


def chronological_split(n_steps: int, seq_len: int, pred_len: int,
                        fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, tuple[int, int]]:
    """Window start indices per split, ``{split: (first, last + 1)}``: targets of train/val/test lie in
    consecutive, non-overlapping time ranges ``[0, a)``, ``[a, b)``, ``[b, T)``; a val/test window's input may
    reach back into the previous range (the usual convention), its targets never do."""
    a = int(round(n_steps * fractions[0]))
    b = int(round(n_steps * (fractions[0] + fractions[1])))
    ranges = {"train": (0, a), "val": (a, b), "test": (b, n_steps)}
    out = {}
    for split, (lo, hi) in ranges.items():
        first = max(lo - seq_len, 0) if split != "train" else 0
        last = hi - seq_len - pred_len + 1  # exclusive end of window starts (targets end by hi)
        if last <= first:
            raise UserError(f"the series ({n_steps} steps) is too short for {split} windows of "
                            f"{seq_len} + {pred_len} steps; use a longer series or a smaller seq_len/pred_len")
        out[split] = (first, last)
    return out


class WindowDataset(Dataset):
    """Sliding windows over a standardized series: item ``i`` -> (x (L, D + M), y (P, D)) float32, for
    window starts ``start, start + stride, ... < stop``."""

    def __init__(self, values: np.ndarray, marks: np.ndarray, seq_len: int, pred_len: int,
                 start: int, stop: int, stride: int = 1) -> None:
        self.values = torch.as_tensor(values, dtype=torch.float32)
        self.inputs = torch.cat([self.values, torch.as_tensor(marks, dtype=torch.float32)], dim=1)
        self.seq_len, self.pred_len, self.start, self.stop, self.stride = seq_len, pred_len, start, stop, stride

    def __len__(self) -> int:
        return (self.stop - self.start + self.stride - 1) // self.stride

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.start + i * self.stride
        return self.inputs[s: s + self.seq_len], self.values[s + self.seq_len: s + self.seq_len + self.pred_len]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All windows as float64 arrays: (N, L, D) inputs (values only) and (N, P, D) targets."""
        v = self.values.double().numpy()
        idx = np.arange(self.start, self.stop, self.stride)[:, None]
        x = v[idx + np.arange(self.seq_len)[None]]
        y = v[idx + self.seq_len + np.arange(self.pred_len)[None]]
        return x, y


# -- baselines ------------------------------------------------------------------------------------------------
def persistence(x: np.ndarray, pred_len: int) -> np.ndarray:
    """(N, L, D) -> (N, P, D): the last observed value, repeated."""
    return np.repeat(x[:, -1:], pred_len, axis=1)


def seasonal_naive(x: np.ndarray, pred_len: int, period: int = 24) -> np.ndarray:
    """(N, L, D) -> (N, P, D): the value one period earlier, ``y[h] = x[L - period + (h mod period)]``."""
    if x.shape[1] < period:
        raise UserError(f"seasonal naive needs seq_len >= {period}")
    idx = x.shape[1] - period + (np.arange(pred_len) % period)
    return x[:, idx]


class RidgeBaseline:
    """Per-variable ridge regression of the next P steps on the variable's own window (and a bias), fitted
    in closed form (float64) on the training windows: a DLinear-like linear model."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha
        self.coef: np.ndarray | None = None  # (D, L + 1, P)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeBaseline:
        n, length, d = x.shape
        coefs = []
        for j in range(d):
            a = np.concatenate([x[:, :, j], np.ones((n, 1))], axis=1)
            reg = self.alpha * np.eye(length + 1)
            reg[-1, -1] = 0.0
            coefs.append(np.linalg.solve(a.T @ a + reg, a.T @ y[:, :, j]))
        self.coef = np.stack(coefs)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.coef is not None, "fit first"
        n = x.shape[0]
        out = [np.concatenate([x[:, :, j], np.ones((n, 1))], axis=1) @ self.coef[j] for j in range(x.shape[2])]
        return np.stack(out, axis=2)


def per_variable_errors(pred: np.ndarray, target: np.ndarray, scale: np.ndarray, columns: Sequence[str],
                        variables: Sequence[str]) -> dict[str, dict[str, float]]:
    """MSE and MAE per variable on the original scale (errors times each column's std), averaged over
    samples, horizons and the stations that have the variable."""
    err = (pred - target) * scale[None, None, :]
    out = {}
    for var in variables:
        cols = [i for i, c in enumerate(columns) if c.split("/", 1)[1] == var]
        e = err[:, :, cols]
        out[var] = {"mse": float(np.mean(e ** 2)), "mae": float(np.mean(np.abs(e)))}
    return out
