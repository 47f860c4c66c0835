"""Audio embedder and data: the fbank against an independent float64 reference, the mel scale in closed
form, SpecAugment masks, padding/cropping, the Speech Commands split lists, the folder layout, the embedded
synthesized words, and the user errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unireplknet.data.audio import WaveformDataset, audio_splits, check_sample_rates, fix_length
from unireplknet.errors import UserError
from unireplknet.modalities.audio import FbankEmbedder, fbank, frame_count, mel_filterbank, mel_scale, spec_augment

sf = pytest.importorskip("soundfile", reason="audio extra not installed: pip install 'unireplknet[audio]'")


def reference_fbank(wave: np.ndarray, sr: int, n_mels: int) -> np.ndarray:
    """Kaldi-style log-mel fbank written independently: explicit frames, a direct DFT sum and the
    triangular filters evaluated point by point from the closed-form mel scale (numpy float64)."""
    win, hop = int(0.025 * sr), int(0.010 * sr)
    n_fft = 1
    while n_fft < win:
        n_fft *= 2
    n_frames = 1 + (len(wave) - win) // hop
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / (win - 1)) for i in range(win)])
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, np.arange(win)) / n_fft)  # zero padding to n_fft is implicit
    lo, hi = 1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + (sr / 2) / 700)
    pts = [lo + (hi - lo) * i / (n_mels + 1) for i in range(n_mels + 2)]
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for b in range(n_fft // 2 + 1):
        m = 1127 * math.log(1 + (b * sr / n_fft) / 700)
        for j in range(n_mels):
            left, center, right = pts[j], pts[j + 1], pts[j + 2]
            if left < m <= center:
                fb[b, j] = (m - left) / (center - left)
            elif center < m < right:
                fb[b, j] = (right - m) / (right - center)
    out = np.zeros((n_frames, n_mels))
    for t in range(n_frames):
        fr = wave[t * hop: t * hop + win].astype(np.float64)
        fr = fr - fr.mean()
        fr = fr - 0.97 * np.concatenate([fr[:1], fr[:-1]])
        power = np.abs(dft @ (fr * hann)) ** 2
        out[t] = np.log(np.maximum(power @ fb, 1.1920928955078125e-07))
    return out


def test_fbank_matches_independent_float64_reference() -> None:
    rng = np.random.default_rng(0)
    sr = 8000
    t = np.arange(3000) / sr
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    ref = reference_fbank(wave, sr, n_mels=40)
    ours = fbank(torch.from_numpy(wave)[None], sample_rate=sr, n_mels=40)[0].numpy()
    assert ours.shape == ref.shape == (frame_count(3000, sr), 40)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)  # float64: same maths, rounding only
    ours32 = fbank(torch.from_numpy(wave).float()[None], sample_rate=sr, n_mels=40)[0].double().numpy()
    np.testing.assert_allclose(ours32, ref, rtol=0, atol=2e-3)  # float32 log-energies


def test_mel_scale_closed_form_and_tone_lands_in_its_filter() -> None:
    assert mel_scale(700.0) == pytest.approx(1127 * math.log(2), rel=1e-12)
    assert float(mel_scale(torch.tensor(1000.0, dtype=torch.float64))) == pytest.approx(
        1127 * math.log(1 + 1000 / 700), rel=1e-12)
    filters = mel_filterbank(64, 512, 16000, dtype=torch.float64)
    assert filters.shape == (257, 64) and float(filters.min()) >= 0 and float(filters.max()) <= 1
    sr, f0 = 16000, 1000.0
    wave = torch.sin(2 * math.pi * f0 * torch.arange(16000, dtype=torch.float64) / sr)[None]
    feats = fbank(wave, sr, n_mels=64)[0].mean(0)
    centers = torch.linspace(mel_scale(20.0), mel_scale(8000.0), 66, dtype=torch.float64)[1:-1]
    expected = int((centers - mel_scale(f0)).abs().argmin())
    assert abs(int(feats.argmax()) - expected) <= 1


def test_embedder_shape_normalization_and_specaugment_only_in_training() -> None:
    emb = FbankEmbedder(sample_rate=16000, n_mels=128, mean=-5.0, std=3.0, freq_mask=20, time_mask=10)
    wave = torch.randn(3, 16000) * 0.1
    emb.eval()
    out = emb(wave)
    assert out.shape == (3, 1, 98, 128)  # paper eq. 3: 1 x T x F, T = 1 + (16000 - 400) // 160
    torch.testing.assert_close(out[:, 0], (emb.features(wave) + 5.0) / 3.0)
    torch.manual_seed(0)
    emb.train()
    masked = emb(wave)
    assert (masked == 0).any() and not (out == 0).any()


def test_clip_mean_norm_centres_each_bin_and_cancels_a_fixed_gain() -> None:
    """Cepstral mean normalization: every mel bin has zero mean over the clip's frames, so a constant gain on the
    waveform (a constant log offset in every bin, well above the log floor) leaves the output unchanged."""
    torch.manual_seed(0)
    emb = FbankEmbedder(sample_rate=16000, n_mels=64, mean=0.0, std=2.0, clip_mean_norm=True).eval()
    wave = torch.randn(2, 8000, dtype=torch.float64).float()
    out = emb(wave)[:, 0]
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb(wave * 3.0)[:, 0], out, atol=1e-4, rtol=0)
    plain = FbankEmbedder(sample_rate=16000, n_mels=64, mean=0.0, std=2.0).eval()
    assert (plain(wave * 3.0) - plain(wave)).abs().min() > 0.5  # without it, the gain shifts every value


def test_spec_augment_masks_are_bands_within_limits() -> None:
    x = torch.ones(64, 50, 40)
    g = torch.Generator().manual_seed(1)
    y = spec_augment(x, freq_mask=7, time_mask=5, num_masks=1, generator=g)
    for s in y:
        zero_f = (s == 0).all(dim=0).nonzero().flatten()  # masked frequency bins (whole column)
        zero_t = (s == 0).all(dim=1).nonzero().flatten()
        assert len(zero_f) <= 7 and len(zero_t) <= 5
        for idx in (zero_f, zero_t):
            if len(idx):
                assert int(idx[-1] - idx[0]) + 1 == len(idx)  # contiguous band
        # everything not in a masked row/column is untouched
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[:, zero_f] = False
        keep[zero_t, :] = False
        assert bool((s[keep] == 1).all()) and bool((s[~keep] == 0).all())
    assert any((s == 0).any() for s in y)
    assert torch.equal(spec_augment(x, 0, 0), x)


def test_fix_length_pads_and_crops() -> None:
    w = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(w, 14), [0, 0, *range(1, 11), 0, 0])  # centred padding
    np.testing.assert_array_equal(fix_length(w, 4), [4, 5, 6, 7])  # centred crop
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = fix_length(w, 4, rng)
        assert len(c) == 4 and c[0] in w[:7] and np.all(np.diff(c) == 1)
        p = fix_length(w, 16, rng)
        assert len(p) == 16 and p.sum() == w.sum()
    assert fix_length(w, 10) is w


def _write(path: Path, sr: int = 16000, n: int = 8000, f: float = 300.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.2 * np.sin(2 * np.pi * f * np.arange(n) / sr).astype(np.float32), sr)


def test_speech_commands_split_lists(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    for word in ("yes", "no"):
        for i in range(4):
            _write(root / word / f"spk{i}_nohash_0.wav")
    _write(root / "_background_noise_" / "white.wav")
    (root / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\nno/spk1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/spk2_nohash_0.wav\nno/spk3_nohash_0.wav\n")
    splits, names, layout = audio_splits(root)
    assert layout == "speech_commands" and names == ["no", "yes"]
    rel = {k: sorted((p.relative_to(root).as_posix(), y) for p, y in v) for k, v in splits.items()}
    assert rel["val"] == [("no/spk1_nohash_0.wav", 0), ("yes/spk1_nohash_0.wav", 1)]
    assert rel["test"] == [("no/spk3_nohash_0.wav", 0), ("yes/spk2_nohash_0.wav", 1)]
    assert len(rel["train"]) == 4 and not any("_background_" in p for p, _ in rel["train"])
    ds = WaveformDataset([p for p, _ in splits["test"]], [y for _, y in splits["test"]], clip_samples=16000)
    wave, label = ds[0]
    assert wave.shape == (16000,) and wave.dtype == torch.float32 and label in (0, 1)
    assert float(wave[:4000].abs().max()) == 0.0  # 0.5 s clip centred in 1 s: zeros on both sides


def test_folder_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for label in ("bird", "cat", "dog"):
        for i in range(30):
            _write(flat / label / f"{label}{i}.wav", n=800)
    splits, names, layout = audio_splits(flat)
    assert layout == "folders" and names == ["bird", "cat", "dog"]
    assert sum(len(v) for v in splits.values()) == 90 and all(len(v) > 0 for v in splits.values())
    assert splits == audio_splits(flat)[0]  # stable
    split_dir = tmp_path / "split"
    for split in ("train", "val", "test"):
        for label in ("a", "b"):
            _write(split_dir / split / label / "x.flac", n=800)
    splits, names, _ = audio_splits(split_dir)
    assert names == ["a", "b"] and [len(splits[s]) for s in ("train", "val", "test")] == [2, 2, 2]


def test_bad_audio_inputs_are_user_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "yes").mkdir(parents=True)
    (empty / "no").mkdir()
    (empty / "no" / "readme.txt").write_text("not audio")
    with pytest.raises(UserError, match="no audio files"):
        audio_splits(empty)
    with pytest.raises(UserError, match="does not exist"):
        audio_splits(tmp_path / "missing")
    _write(tmp_path / "r" / "a.wav", sr=8000)
    with pytest.raises(UserError, match="8000 Hz, the task expects 16000 Hz"):
        check_sample_rates([tmp_path / "r" / "a.wav"], 16000)
    (tmp_path / "r" / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(UserError, match="cannot decode"):
        check_sample_rates([tmp_path / "r" / "bad.wav"], 16000)


def test_synthesized_words_are_deterministic_with_held_out_voices(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("espeakng_loader", reason="audio extra not installed")
    from unireplknet.data.synth_speech import TEST_VARIANTS, load_synth_speech, synthesize

    monkeypatch.setenv("UNIREPLKNET_CACHE", str(tmp_path))
    words, variants = ("yes", "no"), ("m1", "f2", "m8")
    a = synthesize(words, per_voice=2, variants=variants, progress=False)
    b = synthesize(words, per_voice=2, variants=variants, progress=False)
    assert a["audio"].shape == (12, 16000)
    for key in ("label", "voice", "split"):  # seeded choices (eSpeak's waveforms vary by a few samples)
        assert np.array_equal(a[key], b[key])
    assert set(a["voice"][a["split"] == "test"]) == {"m8"} and "m8" in TEST_VARIANTS
    assert not set(a["voice"][a["split"] != "test"]) & set(TEST_VARIANTS)
    assert (np.abs(a["audio"]).max(axis=1) > 1000).all()  # every clip holds speech
    data, names = load_synth_speech(per_voice=2, words=words, variants=variants, progress=False)
    assert names == list(words) and len(list(tmp_path.glob("synth_speech-*.npz"))) == 1
    again, _ = load_synth_speech(per_voice=2, words=words, variants=variants, progress=False)
    assert np.array_equal(data["audio"], again["audio"])  # the cache: exactly the same clips
