"""Audio datasets: fixed-length waveform clips with labels, from the Speech Commands v2 layout, a generic
"one folder per label" layout, or arrays in memory (the built-in synthesized words).

Samples are ``(wave (N,) float32 in [-1, 1], label)``; the fbank is computed on the batch by the model's
embedder (:mod:`unireplknet.modalities.audio`). Files are decoded with soundfile.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unireplknet.errors import UserError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def fix_length(wave: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pad with zeros or crop to ``length`` samples. With ``rng`` (training) the offset is random,
    otherwise the clip is centred (crop the middle, pad equally on both sides)."""
    n = len(wave)
    if n == length:
        return wave
    if n > length:
        start = int(rng.integers(0, n - length + 1)) if rng is not None else (n - length) // 2
        return wave[start: start + length]
    out = np.zeros(length, dtype=wave.dtype)
    start = int(rng.integers(0, length - n + 1)) if rng is not None else (length - n) // 2
    out[start: start + n] = wave
    return out


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Decode ``path`` -> mono float32 in [-1, 1]; a wrong sample rate or unreadable file is a UserError."""
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as err:
        raise UserError(f"cannot decode audio file '{path}' ({err}); is it a valid audio file?") from None
    if sr != sample_rate:
        raise UserError(f"'{path}' is sampled at {sr} Hz, the task expects {sample_rate} Hz; resample the "
                        f"files or set task_args.sample_rate to {sr}")
    return wave.mean(axis=1)


def check_sample_rates(paths: Sequence[Path], sample_rate: int) -> None:
    """Read every file's header; one wrong rate or unreadable file is a UserError naming the file."""
    import soundfile as sf

    for path in paths:
        try:
            sr = sf.info(str(path)).samplerate
        except (RuntimeError, sf.LibsndfileError, OSError) as err:
            raise UserError(f"cannot decode audio file '{path}' ({err}); is it a valid audio file?") from None
        if sr != sample_rate:
            raise UserError(f"'{path}' is sampled at {sr} Hz, the task expects {sample_rate} Hz; resample "
                            f"the files or set task_args.sample_rate to {sr}")


class WaveformDataset(Dataset):
    """Clips -> ``(wave (clip_samples,) float32, label)``.

    ``sources``: file paths or int16/float arrays. In training (``train=True``) the crop/pad offset is random
    and, with ``noise_snr=(lo, hi)`` dB, white + brown background noise is mixed in at a random SNR; in
    evaluation both are fixed per index (seeded), so val/test metrics are deterministic.
    """

    def __init__(self, sources: Sequence[Path | np.ndarray], labels: Sequence[int], clip_samples: int,
                 sample_rate: int = 16000, train: bool = False, noise_snr: tuple[float, float] | None = None,
                 seed: int = 0) -> None:
        self.sources, self.labels = list(sources), [int(y) for y in labels]
        self.clip_samples, self.sample_rate = clip_samples, sample_rate
        self.train, self.noise_snr, self.seed = train, noise_snr, seed

    def __len__(self) -> int:
        return len(self.sources)

    def wave(self, i: int) -> np.ndarray:
        src = self.sources[i]
        if isinstance(src, np.ndarray):
            return src.astype(np.float32) / 32768.0 if src.dtype == np.int16 else src.astype(np.float32)
        return read_audio(Path(src), self.sample_rate)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng((torch.initial_seed() + i) % 2**63) if self.train \
            else np.random.default_rng((self.seed, i))
        wave = fix_length(self.wave(i), self.clip_samples, rng if self.train else None)
        if self.noise_snr is not None:
            wave = add_noise(wave, rng, self.noise_snr)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), self.labels[i]


def add_noise(wave: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """Mix white + brown (integrated, low-frequency) noise at an SNR drawn from ``snr_db`` (dB)."""
    n = len(wave)
    white = rng.standard_normal(n)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.linspace(brown[0], brown[-1], n)
    noise = rng.uniform(0, 1) * white / (white.std() + 1e-9) + rng.uniform(0, 1) * brown / (brown.std() + 1e-9)
    p_sig = float(np.mean(wave.astype(np.float64) ** 2)) + 1e-10
    snr = rng.uniform(*snr_db)
    noise *= np.sqrt(p_sig / 10 ** (snr / 10) / (np.mean(noise ** 2) + 1e-12))
    return (wave + noise).astype(np.float32)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def speech_commands_splits(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """Speech Commands v2 layout: ``root/<word>/*.wav`` with ``validation_list.txt`` and
    ``testing_list.txt`` (paths relative to ``root``); every other clip is training.
    ``_background_noise_`` is not a class. -> ({'train'|'val'|'test': [(path, label)]}, class names)."""
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not names:
        raise UserError(f"'{root}' has no word folders; expected the Speech Commands layout "
                        f"{root}/<word>/*.wav with validation_list.txt and testing_list.txt")

    def read_list(name: str) -> set[str]:
        return {line.strip() for line in (root / name).read_text().splitlines() if line.strip()}

    val_list, test_list = read_list("validation_list.txt"), read_list("testing_list.txt")
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for path in _audio_files(root / name):
            rel = path.relative_to(root).as_posix()
            split = "test" if rel in test_list else "val" if rel in val_list else "train"
            splits[split].append((path, label))
    return splits, names


def folder_splits(root: Path, val_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """One folder per label: ``root/{train,val,test}/<label>/*`` when those folders exist, else
    ``root/<label>/*`` split by a hash of the file name (stable when files are added)."""
    splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    if (root / "train").is_dir():
        names = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
        for split in ("train", "val", "test"):
            for label, name in enumerate(names):
                if (root / split / name).is_dir():
                    splits[split] += [(p, label) for p in _audio_files(root / split / name)]
        return splits, names
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    for label, name in enumerate(names):
        for path in _audio_files(root / name):
            h = int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16) / 16**8
            split = "test" if h < test_fraction else "val" if h < test_fraction + val_fraction else "train"
            splits[split].append((path, label))
    return splits, names


def audio_splits(root: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str], str]:
    """Detect the layout of ``root`` -> (splits, class names, layout name); UserErrors for empty data."""
    if not root.is_dir():
        raise UserError(f"audio folder '{root}' does not exist; pass --data DIR (Speech Commands layout or "
                        "one folder per label) or leave --data out for the built-in spoken words")
    if (root / "validation_list.txt").is_file() and (root / "testing_list.txt").is_file():
        splits, names = speech_commands_splits(root)
        layout = "speech_commands"
    else:
        splits, names = folder_splits(root)
        layout = "folders"
    if not any(splits.values()):
        raise UserError(f"'{root}' holds no audio files ({', '.join(AUDIO_SUFFIXES)}) in label folders; "
                        "lay the data out as DIR/<label>/*.wav")
    if len(names) < 2:
        raise UserError(f"'{root}' has {len(names)} label folder; classification needs at least 2")
    for split in ("train", "val", "test"):
        if not splits[split]:
            raise UserError(f"'{root}' gives no {split} clips ({layout} layout); add files or use "
                            "DIR/{train,val,test}/<label>/")
    return splits, names, layout
