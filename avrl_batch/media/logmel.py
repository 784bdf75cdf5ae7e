"""VGGish log-mel front end: waveform (any rate, any channels) -> [E, 96, 64] examples.

A port of the math in tensorflow/models research/audioset/vggish (``mel_features.py`` and
``vggish_input.py``, the same code torchvggish ships), so that pretrained VGGish weights see
exactly the input they were trained on. librosa's mel filters differ (Slaney scale, area
normalisation, DC bin kept), so they are not used.

Resampling uses resampy's ``kaiser_best`` filter, which is what the reference calls. soxr
(VHQ or HQ) was measured against it on 3 s of audio: the log-mel differs by up to 0.03
(tones) and 0.5-2.8 (white noise, chirps; worst at 8 kHz input where the bands above the
4 kHz Nyquist hold only filter leakage whose log differs), far above the 1e-3 the model's
input must match to, so soxr is not used here.
"""

from __future__ import annotations

import numpy as np

# --- constants (VGGish's vggish_params.py), with units ---------------------------------
SAMPLE_RATE = 16_000  # Hz: the rate VGGish was trained at
STFT_WINDOW_SECONDS = 0.025  # s: 400 samples at 16 kHz
STFT_HOP_SECONDS = 0.010  # s: 160 samples at 16 kHz
NUM_MEL_BINS = 64  # mel bands per frame
MEL_MIN_HZ = 125.0  # Hz: lower edge of the lowest band
MEL_MAX_HZ = 7500.0  # Hz: upper edge of the highest band
LOG_OFFSET = 0.01  # added to mel magnitudes before the log (log(0.01) = silence floor)
EXAMPLE_WINDOW_SECONDS = 0.96  # s: 96 STFT frames per example
EXAMPLE_HOP_SECONDS = 0.96  # s: examples do not overlap

# derived sizes, in samples / frames at SAMPLE_RATE
WINDOW_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))  # 400
HOP_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW_SAMPLES)))  # 512: next power of two of 400
EXAMPLE_FRAMES = int(round(EXAMPLE_WINDOW_SECONDS / STFT_HOP_SECONDS))  # 96
EXAMPLE_HOP_FRAMES = int(round(EXAMPLE_HOP_SECONDS / STFT_HOP_SECONDS))  # 96
# HTK mel scale: mel = 1127 * ln(1 + f / 700)
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0

RESAMPLE_FILTER = "kaiser_best"  # resampy filter; the reference's default


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 * ln(1 + f / 700)."""
    return _MEL_HIGH_Q * np.log(1.0 + np.asarray(hz, dtype=np.float64) / _MEL_BREAK_HZ)


def periodic_hann(n: int) -> np.ndarray:
    """Periodic Hann window (period n, not n - 1 as np.hanning): what VGGish's STFT uses."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / n * np.arange(n))


def mel_matrix(
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """VGGish's spectrogram_to_mel_matrix: (num_spectrogram_bins, num_mel_bins) triangles.

    Triangles are linear in mel, peak 1 (no area normalisation), and the DC bin is zeroed
    as HTK does.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"need 0 <= lower ({lower_hz}) < upper ({upper_hz}) <= {nyquist}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))  # (S,)
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # each (M,)
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)  # (S, M)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)  # (S, M)
    weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0
    return weights


_MEL_MATRIX = mel_matrix()  # (257, 64), float64: computed once, read-only use


def to_mono_16k(
    wave: np.ndarray, sample_rate: int, *, channels_first: bool | None = None
) -> np.ndarray:
    """Mix down to mono and resample to 16 kHz: float32 (N,).

    ``wave`` is (N,), or 2-D with a channel axis: (C, N) when ``channels_first`` is True,
    (N, C) when False (the layout torchvggish and soundfile use). When None, the shorter
    axis is taken as channels. Channels are averaged before resampling (both are linear, so
    the order does not change the result).
    """
    x = np.asarray(wave)
    if x.ndim == 2:
        if channels_first is None:
            channels_first = x.shape[0] < x.shape[1]
        x = x.mean(axis=1 if not channels_first else 0)  # (N,)
    elif x.ndim != 1:
        raise ValueError(f"waveform must be (N,) or 2-D with a channel axis, got {x.shape}")
    x = x.astype(np.float64, copy=False)
    if sample_rate != SAMPLE_RATE and x.size:
        import resampy

        x = resampy.resample(x, sample_rate, SAMPLE_RATE, filter=RESAMPLE_FILTER)
    return x.astype(np.float32)


def log_mel_spectrogram(wave16k: np.ndarray) -> np.ndarray:
    """Log-mel frames of 16 kHz mono audio: float64 (F, 64), F = 1 + (N - 400) // 160.

    Magnitude STFT without centring (frames start at sample 0, incomplete tail dropped),
    as VGGish computes it. Fewer than 400 samples gives (0, 64).
    """
    x = np.asarray(wave16k, dtype=np.float64)
    n_frames = 0 if x.size < WINDOW_SAMPLES else 1 + (x.size - WINDOW_SAMPLES) // HOP_SAMPLES
    if n_frames == 0:
        return np.zeros((0, NUM_MEL_BINS))
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW_SAMPLES)[::HOP_SAMPLES]
    frames = frames[:n_frames] * periodic_hann(WINDOW_SAMPLES)  # (F, 400)
    spectrum = np.abs(np.fft.rfft(frames, FFT_LENGTH))  # (F, 257)
    return np.log(spectrum @ _MEL_MATRIX + LOG_OFFSET)  # (F, 64)


def _frame_examples(log_mel: np.ndarray) -> np.ndarray:
    """(F, 64) -> (E, 96, 64) complete, non-overlapping examples; incomplete tail dropped."""
    n = (
        0
        if len(log_mel) < EXAMPLE_FRAMES
        else 1 + (len(log_mel) - EXAMPLE_FRAMES) // (EXAMPLE_HOP_FRAMES)
    )
    starts = np.arange(n) * EXAMPLE_HOP_FRAMES
    idx = starts[:, None] + np.arange(EXAMPLE_FRAMES)  # (E, 96)
    return log_mel[idx].astype(np.float32)  # (E, 96, 64)


def log_mel_examples(
    wave: np.ndarray, sample_rate: int, *, channels_first: bool | None = None
) -> np.ndarray:
    """VGGish input examples of a waveform: float32 (E, 96, 64).

    Equals torchvggish's ``vggish_input.waveform_to_examples`` (without the channel axis).
    Audio shorter than one example (0.975 s) gives E = 0; use
    :func:`log_mel_examples_fixed` when a fixed count is needed.
    """
    return _frame_examples(
        log_mel_spectrogram(to_mono_16k(wave, sample_rate, channels_first=channels_first))
    )


def samples_for_examples(n_examples: int) -> int:
    """16 kHz samples needed for ``n_examples`` complete examples (15600 for one)."""
    n_frames = EXAMPLE_FRAMES + (n_examples - 1) * EXAMPLE_HOP_FRAMES
    return WINDOW_SAMPLES + (n_frames - 1) * HOP_SAMPLES


def examples_for_duration(seconds: float) -> int:
    """How many examples a span of ``seconds`` yields; at least 1.

    Counted exactly as VGGish frames audio (a 4 s span -> 4, 2 s -> 2, 0.96 s -> 1). A span
    too short for one complete example (under 0.975 s) still counts as one: its audio is
    zero-padded (see :func:`log_mel_examples_fixed`), so every window has audio features.
    """
    n_samples = int(round(seconds * SAMPLE_RATE))
    if n_samples < WINDOW_SAMPLES:
        return 1
    n_frames = 1 + (n_samples - WINDOW_SAMPLES) // HOP_SAMPLES
    if n_frames < EXAMPLE_FRAMES:
        return 1
    return 1 + (n_frames - EXAMPLE_FRAMES) // EXAMPLE_HOP_FRAMES


def log_mel_examples_fixed(
    wave: np.ndarray,
    sample_rate: int,
    n_examples: int,
    *,
    channels_first: bool | None = None,
) -> np.ndarray:
    """Exactly ``n_examples`` examples, float32 (n_examples, 96, 64), so windows stack.

    The 16 kHz mono audio is zero-padded at the end (zeros give log(0.01), VGGish's silence
    floor) or trimmed to the samples ``n_examples`` complete examples need; the examples it
    does have are identical to :func:`log_mel_examples`'s.
    """
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    x = to_mono_16k(wave, sample_rate, channels_first=channels_first)
    return log_mel_examples_16k_fixed(x, n_examples)


def log_mel_examples_16k_fixed(wave16k: np.ndarray, n_examples: int) -> np.ndarray:
    """As :func:`log_mel_examples_fixed` for audio already 16 kHz mono (N,)."""
    need = samples_for_examples(n_examples)
    x = np.asarray(wave16k, dtype=np.float32)[:need]
    if x.size < need:
        x = np.concatenate([x, np.zeros(need - x.size, np.float32)])  # (need,)
    out = _frame_examples(log_mel_spectrogram(x))
    assert out.shape == (n_examples, EXAMPLE_FRAMES, NUM_MEL_BINS)
    return out
