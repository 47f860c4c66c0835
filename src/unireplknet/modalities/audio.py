"""Audio embedder (paper §3.3, eq. 3): waveform -> log-mel filterbank -> a 1×T×F map (C′ = 1, H = T, W = F).

The filterbank follows Kaldi's ``fbank`` as used by AST: 25 ms Hann windows every 10 ms (no padding at the
edges), DC removal and 0.97 pre-emphasis per frame, power spectrum on the next power-of-two FFT size,
triangular filters equally spaced on the mel scale ``mel(f) = 1127 ln(1 + f / 700)`` between 20 Hz and
Nyquist, natural log with a floor. Everything is batched torch, so it runs on the GPU with the model.
SpecAugment (random frequency and time masks) is applied in training mode only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_FLOOR = 1.1920928955078125e-07  # float32 epsilon, Kaldi's floor


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Hz -> mel (Kaldi/HTK): ``1127 ln(1 + f / 700)``."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, low_hz: float = 20.0,
                   high_hz: float | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Triangular mel filters -> (n_fft // 2 + 1, n_mels): filter ``m`` rises linearly in mel from the
    ``m``-th to the ``m+1``-th of ``n_mels + 2`` equally spaced mel points and falls to the ``m+2``-th."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    lo, hi = mel_scale(float(low_hz)), mel_scale(float(high_hz))
    points = torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64)
    left, center, right = points[:-2], points[1:-1], points[2:]
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    mel = mel_scale(freqs)[:, None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(dtype)


def frame_count(num_samples: int, sample_rate: int, win_ms: float = 25.0, hop_ms: float = 10.0) -> int:
    """Frames of a clip (windows that fit entirely: ``1 + (N - win) // hop``)."""
    win, hop = round(sample_rate * win_ms / 1000), round(sample_rate * hop_ms / 1000)
    return 1 + (num_samples - win) // hop if num_samples >= win else 0


def dft_basis(win: int, n_fft: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(win, 2·(n_fft/2 + 1)) real DFT of a ``win``-sample frame zero-padded to ``n_fft``: [cos | -sin] columns,
    so ``frame @ basis`` gives the real and imaginary parts (a matrix product, which ONNX expresses)."""
    angles = 2 * math.pi * torch.outer(torch.arange(win, dtype=torch.float64),
                                       torch.arange(n_fft // 2 + 1, dtype=torch.float64)) / n_fft
    return torch.cat([angles.cos(), -angles.sin()], dim=1).to(dtype)


def fbank(wave: torch.Tensor, sample_rate: int = 16000, n_mels: int = 128, win_ms: float = 25.0,
          hop_ms: float = 10.0, preemphasis: float = 0.97, low_hz: float = 20.0,
          filters: torch.Tensor | None = None, window: torch.Tensor | None = None,
          basis: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel filterbank energies: (B, N) waveform -> (B, T, n_mels), T = ``frame_count(N)``.

    Computed in ``wave``'s dtype (float64 for references). ``filters``/``window``/``basis`` (:func:`dft_basis`) may
    be passed precomputed.
    """
    win, hop = round(sample_rate * win_ms / 1000), round(sample_rate * hop_ms / 1000)
    if wave.shape[-1] < win:
        raise ValueError(f"clip of {wave.shape[-1]} samples is shorter than one {win}-sample window")
    n_fft = 1 << (win - 1).bit_length()
    starts = torch.arange(1 + (wave.shape[-1] - win) // hop, device=wave.device) * hop
    frames = wave[..., starts[:, None] + torch.arange(win, device=wave.device)]  # (B, T, win); a Gather in ONNX
    frames = frames - frames.mean(dim=-1, keepdim=True)
    prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - preemphasis * prev
    if window is None:
        window = torch.hann_window(win, periodic=False, dtype=wave.dtype, device=wave.device)
    if basis is None:
        basis = dft_basis(win, n_fft, wave.dtype).to(wave.device)
    z = (frames * window) @ basis  # (B, T, 2·(n_fft/2 + 1)): real and imaginary parts
    half = z.shape[-1] // 2
    spec = z[..., :half].pow(2) + z[..., half:].pow(2)  # power spectrum
    if filters is None:
        filters = mel_filterbank(n_mels, n_fft, sample_rate, low_hz, dtype=wave.dtype).to(wave.device)
    return torch.log(torch.clamp(spec @ filters, min=LOG_FLOOR))


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int, num_masks: int = 2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment on (B, T, F): per sample, ``num_masks`` frequency bands of width U[0, freq_mask] and as
    many time spans of width U[0, time_mask] set to 0 (the normalized mean). Returns a new tensor."""
    b, t, f = x.shape
    keep = torch.ones(b, t, f, dtype=torch.bool, device=x.device)
    for size, length, axis in ((freq_mask, f, 2), (time_mask, t, 1)):
        if size <= 0:
            continue
        for _ in range(num_masks):
            width = (torch.rand(b, generator=generator) * (min(size, length) + 1)).long()
            start = (torch.rand(b, generator=generator) * (length - width + 1).float()).long()
            idx = torch.arange(length)[None, :]
            band = ((idx >= start[:, None]) & (idx < (start + width)[:, None])).to(x.device)
            keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return x * keep


class FbankEmbedder(nn.Module):
    """(B, N) waveform -> normalized log-mel map (B, 1, T, F) (paper eq. 3), SpecAugment when training.

    ``mean``/``std``: the dataset's fbank statistics (AST-style normalization ``(x - mean) / std``).
    ``clip_mean_norm``: first subtract each mel bin's mean over the clip's frames (cepstral mean normalization
    in the log-mel domain), which removes a voice's or a channel's fixed spectral tilt.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 128, win_ms: float = 25.0, hop_ms: float = 10.0,
                 mean: float = 0.0, std: float = 1.0, freq_mask: int = 24, time_mask: int = 20,
                 num_masks: int = 2, clip_mean_norm: bool = False) -> None:
        super().__init__()
        self.clip_mean_norm = clip_mean_norm
        self.sample_rate, self.n_mels, self.win_ms, self.hop_ms = sample_rate, n_mels, win_ms, hop_ms
        self.mean, self.std = float(mean), float(std)
        self.freq_mask, self.time_mask, self.num_masks = freq_mask, time_mask, num_masks
        win = round(sample_rate * win_ms / 1000)
        n_fft = 1 << (win - 1).bit_length()
        self.register_buffer("filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)
        self.register_buffer("window", torch.hann_window(win, periodic=False), persistent=False)
        self.register_buffer("basis", dft_basis(win, n_fft), persistent=False)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> unnormalized log-mel (B, T, F), in float32."""
        wave = wave.float()
        return fbank(wave, self.sample_rate, self.n_mels, self.win_ms, self.hop_ms, filters=self.filters,
                     window=self.window, basis=self.basis)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = self.features(wave)
            if self.clip_mean_norm:
                x = x - x.mean(dim=1, keepdim=True)
            x = (x - self.mean) / self.std
            if self.training and (self.freq_mask > 0 or self.time_mask > 0):
                x = spec_augment(x, self.freq_mask, self.time_mask, self.num_masks)
        return x[:, None]
