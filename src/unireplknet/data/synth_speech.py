"""The built-in spoken-words dataset: words synthesized offline with eSpeak NG (the library and voices
shipped by the ``espeakng-loader`` wheel), many voices, speeds and pitches; cached as one ``.npz``.

Clips are 16 kHz mono int16, padded/cropped to ``clip_seconds`` with the word at a random offset. Voices
are split by voice: the test split uses voices never heard in training or validation, so the test accuracy
measures generalization to new speakers. Background noise is added when the clips are loaded
(:class:`unireplknet.data.audio.WaveformDataset`), fresh each epoch in training, fixed for val/test.

The cache lives in ``$UNIREPLKNET_CACHE`` (default ``~/.cache/unireplknet``) under a name derived from every
generation setting, so the same settings are generated once. Every random choice (accent, speed, pitch,
gain, offset, splits) is seeded; eSpeak NG itself varies a synthesized word slightly between calls (a few
samples of timing, its internal noise state), so the cached file is what makes a dataset exactly
reproducible.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

from unireplknet.data.datasets import cache_dir
from unireplknet.errors import UserError

log = logging.getLogger(__name__)

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one")
# eSpeak voice variants (``en+<variant>``); the last ones are held out for the test split
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "adam", "alex", "andy",
                  "annie", "aunty", "benjamin", "caleb", "david", "ed", "edward", "gene", "grandpa", "ian",
                  "john", "linda", "max", "michel", "mike2", "norbert", "Andrea", "Mario", "Mr serious")
TEST_VARIANTS = ("m8", "f5", "boris", "iven", "klatt", "grandma", "Lee", "antonio")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029")
SAMPLE_RATE = 16000


class _ESpeak:
    """Minimal ctypes binding of libespeak-ng (synchronous synthesis into memory)."""

    _CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise UserError("the built-in speech dataset needs eSpeak NG: pip install 'unireplknet[audio]' "
                            "(espeakng-loader), or pass --data DIR with audio files") from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.libc = ctypes.CDLL(None)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2: synchronous
        if rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self.rate = rate
        self._chunks: list[np.ndarray] = []

        def collect(wav: Any, n: int, events: Any) -> int:
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = self._CB(collect)
        self.lib.espeak_SetSynthCallback(self._cb)

    def say(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """Synthesize ``text`` -> int16 samples at ``self.rate`` Hz."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak has no voice '{voice}'")
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE (words per minute)
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH (0-100)
        self._chunks = []
        # eSpeak's noise sources draw from its own generator and from the C library's rand(): reseed both
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):
            self.lib.espeak_ng_SetRandSeed(0)
        self.libc.srand(0)
        data = text.encode() + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)  # POS_CHARACTER, espeakCHARS_AUTO
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _settings(words: tuple[str, ...], per_voice: int, clip_seconds: float, seed: int) -> dict[str, Any]:
    return {"words": list(words), "train_variants": list(TRAIN_VARIANTS), "test_variants": list(TEST_VARIANTS),
            "accents": list(ACCENTS), "per_voice": per_voice, "clip_seconds": clip_seconds, "seed": seed,
            "sample_rate": SAMPLE_RATE, "version": 1}


def synthesize(words: tuple[str, ...] = WORDS, per_voice: int = 2, clip_seconds: float = 1.0, seed: int = 0,
               variants: tuple[str, ...] | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate the dataset -> ``{'audio': (N, clip) int16, 'label': (N,), 'voice': (N,) str,
    'split': (N,) str}``; ``per_voice`` renditions (accent, speed, pitch drawn at random) per word and voice
    variant. ``variants`` restricts the voices (tests)."""
    from scipy.signal import resample_poly
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    tts = _ESpeak()
    clip = int(round(clip_seconds * SAMPLE_RATE))
    g = np.gcd(SAMPLE_RATE, tts.rate)
    chosen = variants or TRAIN_VARIANTS + TEST_VARIANTS
    audio, labels, voices, splits = [], [], [], []
    jobs = [(v, w) for v in chosen for w in range(len(words))]
    for variant, w in tqdm(jobs, desc="synthesizing speech", disable=not progress, leave=False):
        for _ in range(per_voice):
            accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
            speed, pitch = int(rng.integers(110, 230)), int(rng.integers(20, 80))
            wav = tts.say(words[w], f"{accent}+{variant}", speed, pitch).astype(np.float32)
            wav = resample_poly(wav, SAMPLE_RATE // g, tts.rate // g)
            nz = np.flatnonzero(np.abs(wav) > 200)  # trim the silence eSpeak leaves around the word
            wav = wav[nz[0]: nz[-1] + 1] if len(nz) else wav
            wav = wav[:clip]
            gain = 10 ** rng.uniform(-0.5, 0.2)  # -10 ... +4 dB
            out = np.zeros(clip, np.float32)
            start = int(rng.integers(0, clip - len(wav) + 1))
            out[start: start + len(wav)] = wav * gain
            audio.append(np.clip(out, -32768, 32767).astype(np.int16))
            labels.append(w)
            voices.append(variant)
            splits.append("test" if variant in TEST_VARIANTS else "train")
    split = np.array(splits)
    # validation: one in five training-voice clips (same voices as training, other renditions)
    train_idx = np.flatnonzero(split == "train")
    val_pick = rng.permutation(train_idx)[: len(train_idx) // 5]
    split[val_pick] = "val"
    return {"audio": np.stack(audio), "label": np.array(labels, np.int64), "voice": np.array(voices),
            "split": split}


def load_synth_speech(per_voice: int = 2, clip_seconds: float = 1.0, seed: int = 0,
                      words: tuple[str, ...] = WORDS, variants: tuple[str, ...] | None = None,
                      progress: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """The cached dataset (generated on first use) and its word list."""
    settings = _settings(tuple(words), per_voice, clip_seconds, seed)
    settings["variants"] = list(variants) if variants else None
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"synth_speech-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, list(words)
    log.info("synthesizing the spoken-words dataset (%d words) into %s", len(words), path)
    data = synthesize(tuple(words), per_voice, clip_seconds, seed, variants, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **data)
    os.replace(tmp, path)
    return data, list(words)
