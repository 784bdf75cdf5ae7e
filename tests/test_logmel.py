"""The VGGish log-mel front end against torchvggish (the reference, a test-only oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from torchvggish import mel_features, vggish_input  # test-only oracle ([test] extra)

from avrl_batch.media import logmel

RATES = (8_000, 16_000, 22_050, 44_100, 48_000)


def _waves(sample_rate: int, seconds: float = 3.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sample_rate)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    top = min(sample_rate / 2 - 200, 7800.0)
    return {
        "random": rng.uniform(-1.0, 1.0, n),
        # tones across the mel range, the top one near the 7.5 kHz band edge where it exists
        "tonal": 0.5 * np.sin(2 * np.pi * 440 * t)
        + 0.3 * np.sin(2 * np.pi * 2500 * t)
        + 0.1 * np.sin(2 * np.pi * top * t),
        # a chirp sweeps every band (and the resampler's transition band)
        "chirp": 0.5 * np.sin(2 * np.pi * (100 * t + (top - 100) / (2 * seconds) * t * t)),
    }


@pytest.mark.parametrize("sample_rate", RATES)
def test_matches_torchvggish(sample_rate: int) -> None:
    for kind, wave in _waves(sample_rate).items():
        ref = vggish_input.waveform_to_examples(wave, sample_rate, return_tensor=False)
        ours = logmel.log_mel_examples(wave, sample_rate)
        assert ours.dtype == np.float32
        assert ours.shape == ref.shape == (3, 96, 64), kind
        diff = float(np.abs(ours - ref).max())
        assert diff <= 1e-3, f"{kind} at {sample_rate} Hz: max abs diff {diff}"


def test_multichannel_layouts_match_torchvggish() -> None:
    rng = np.random.default_rng(1)
    stereo_nc = rng.uniform(-1, 1, (44_100 * 2, 2))  # (N, C): torchvggish's layout
    ref = vggish_input.waveform_to_examples(stereo_nc, 44_100, return_tensor=False)
    assert np.abs(logmel.log_mel_examples(stereo_nc, 44_100) - ref).max() <= 1e-3
    # the same audio channels-first, explicit and inferred; and a 6-channel (C, N) array
    ours_cn = logmel.log_mel_examples(stereo_nc.T, 44_100, channels_first=True)
    assert np.abs(ours_cn - ref).max() <= 1e-3
    assert np.abs(logmel.log_mel_examples(stereo_nc.T, 44_100) - ref).max() <= 1e-3
    six = np.repeat(stereo_nc.T.mean(axis=0, keepdims=True), 6, axis=0)  # (6, N)
    assert np.abs(logmel.log_mel_examples(six, 44_100) - ref).max() <= 1e-3


def test_mel_matrix_is_vggish() -> None:
    ref = mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64,
        num_spectrogram_bins=257,
        audio_sample_rate=16_000,
        lower_edge_hertz=125,
        upper_edge_hertz=7500,
    )
    np.testing.assert_allclose(logmel.mel_matrix(), ref, atol=1e-12)
    assert (logmel.FFT_LENGTH, logmel.WINDOW_SAMPLES, logmel.HOP_SAMPLES) == (512, 400, 160)
    np.testing.assert_allclose(logmel.periodic_hann(400), mel_features.periodic_hann(400))


def test_examples_for_duration_counts_like_vggish() -> None:
    rng = np.random.default_rng(2)
    for seconds in (0.976, 1.0, 1.5, 1.94, 1.95, 2.0, 3.84, 3.9, 4.0, 10.0):
        wave = rng.uniform(-1, 1, int(round(seconds * 16_000)))
        ref = vggish_input.waveform_to_examples(wave, 16_000, return_tensor=False)
        assert logmel.examples_for_duration(seconds) == len(ref), seconds
    # too short for one complete example: still one (zero-padded)
    for seconds in (0.0, 0.1, 0.96, 0.97):
        assert logmel.examples_for_duration(seconds) == 1
    assert logmel.examples_for_duration(4.0) == 4
    assert logmel.examples_for_duration(2.0) == 2


def test_fixed_count_pads_and_trims() -> None:
    rng = np.random.default_rng(3)
    wave = rng.uniform(-1, 1, 48_000 * 3).astype(np.float32)  # 3 s at 48 kHz
    full = logmel.log_mel_examples(wave, 48_000)  # (3, 96, 64)
    trimmed = logmel.log_mel_examples_fixed(wave, 48_000, 2)
    np.testing.assert_allclose(trimmed, full[:2], atol=1e-5)
    padded = logmel.log_mel_examples_fixed(wave, 48_000, 5)
    assert padded.shape == (5, 96, 64) and padded.dtype == np.float32
    np.testing.assert_allclose(padded[:3], full, atol=1e-5)
    # padding is silence: VGGish's floor log(0.01)
    np.testing.assert_allclose(padded[4], np.log(logmel.LOG_OFFSET), atol=1e-6)
    short = logmel.log_mel_examples_fixed(wave[:100], 48_000, 1)
    assert short.shape == (1, 96, 64)
    assert logmel.log_mel_examples(wave[:100], 48_000).shape == (0, 96, 64)


def test_mono_16k_shapes() -> None:
    x = np.ones((2, 8_000), np.float64)
    assert logmel.to_mono_16k(x, 8_000).shape == (16_000,)
    assert logmel.to_mono_16k(x, 8_000).dtype == np.float32
    with pytest.raises(ValueError):
        logmel.to_mono_16k(np.zeros((2, 2, 2)), 16_000)


@pytest.mark.parametrize("sample_rate", (8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000))
def test_fast_resampler_is_resampy_kaiser_best(sample_rate: int) -> None:
    import resampy

    rng = np.random.default_rng(sample_rate)
    # odd lengths (a partial last block) and a one-sample input; at 48 kHz also 20 s, long
    # enough that the product runs in two chunks (17.2 s each)
    lengths = [1, 7, 4_095, int(3.3 * sample_rate)]
    if sample_rate == 48_000:
        lengths.append(20 * sample_rate + 11)
    for n in lengths:
        x = rng.uniform(-1.0, 1.0, n)
        ours = logmel.resample_kaiser_best(x, sample_rate, 16_000)
        if int(n * 16_000 / sample_rate) < 1:
            assert ours.shape == (0,)  # resampy refuses an input this short
            continue
        ref = resampy.resample(x, sample_rate, 16_000, filter="kaiser_best")
        assert ours.shape == ref.shape, n
        assert float(np.abs(ours - ref).max()) <= 1e-8, (n, float(np.abs(ours - ref).max()))


def test_fast_resampler_odd_rate_falls_back_to_resampy() -> None:
    import resampy

    x = np.random.default_rng(4).uniform(-1, 1, 16_001)
    ours = logmel.resample_kaiser_best(x, 16_001, 16_000)  # 16000 phases: not tabulated
    np.testing.assert_array_equal(ours, resampy.resample(x, 16_001, 16_000, filter="kaiser_best"))
    assert logmel.resample_kaiser_best(x, 16_000, 16_000) is not x  # a copy, as resampy
