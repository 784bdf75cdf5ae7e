"""Synthetic sounds of the scene, made with numpy: crowd babble and each class's acoustic cue.

Every cue generator returns float32 at unit RMS over its active part, so that the caller sets
its level as a signal-to-babble ratio in dB; a cue's loudness therefore carries no label.
"""

from __future__ import annotations

import numpy as np

BABBLE_BAND_HZ = (250.0, 3400.0)  # speech band; the crowd never has energy above it
FOOTSTEP_RUN_HZ = (2.6, 4.2)  # running cadence (steps per second), the same for run and chase


def _bandpass(x: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    """Zero-phase brick-wall band-pass through the FFT (cheap, good enough for noise)."""
    spec = np.fft.rfft(x, axis=-1)
    f = np.fft.rfftfreq(x.shape[-1], 1.0 / sr)
    spec[..., (f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, n=x.shape[-1], axis=-1)


def _unit_rms(x: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    part = x[active] if active is not None and active.any() else x
    rms = float(np.sqrt(np.mean(part**2))) if part.size else 0.0
    return (x / rms).astype(np.float32) if rms > 0 else x.astype(np.float32)


def _smooth_envelope(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """A random positive envelope varying at about ``rate_hz`` (syllables, crowd swells)."""
    k = max(int(n / sr * rate_hz) + 2, 2)
    pts = rng.random(k)
    env = np.interp(np.linspace(0, k - 1, n), np.arange(k), pts)
    return env**2


def babble(rng: np.random.Generator, n: int, sr: int, voices: int) -> np.ndarray:
    """Crowd babble: several band-limited noise 'voices', each syllable-modulated; unit RMS."""
    out = np.zeros(n, dtype=np.float64)
    for _ in range(voices):
        env = _smooth_envelope(rng, n, sr, rng.uniform(3.0, 6.0))
        out += rng.standard_normal(n) * env
    out = _bandpass(out, sr, *BABBLE_BAND_HZ)
    return _unit_rms(out)


def _decay(n: int, sr: int, tau_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (tau_s * sr))


def _place(out: np.ndarray, sig: np.ndarray, at: int) -> None:
    if at >= out.shape[0] or at + sig.shape[0] <= 0:
        return
    lo = max(at, 0)
    hi = min(at + sig.shape[0], out.shape[0])
    out[lo:hi] += sig[lo - at : hi - at]


def gunshots(rng: np.random.Generator, n: int, sr: int, t0: float) -> np.ndarray:
    """1-4 broadband impulses with a fast decay and a short echo tail (shoot)."""
    out = np.zeros(n)
    active = np.zeros(n, bool)
    t = t0
    for _ in range(int(rng.integers(1, 5))):
        length = int(0.35 * sr)
        tau = rng.uniform(0.012, 0.04)
        shot = rng.standard_normal(length) * _decay(length, sr, tau)
        echo_at = int(rng.uniform(0.05, 0.12) * sr)
        shot[echo_at:] += (
            0.3 * rng.standard_normal(length - echo_at) * _decay(length - echo_at, sr, tau * 2.5)
        )
        at = int(t * sr)
        _place(out, shot, at)
        active[max(at, 0) : max(at + int(3 * tau * sr), 0)] = True
        t += rng.uniform(0.12, 0.6)
    return _unit_rms(out, active)


def _harmonic(
    rng: np.random.Generator,
    length: int,
    sr: int,
    f0: np.ndarray,
    n_harm: int,
    tilt: float,
) -> np.ndarray:
    """A voiced sound: harmonics of a time-varying f0 (Hz per sample), amplitude 1/k^tilt."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = np.zeros(length)
    for k in range(1, n_harm + 1):
        if k * f0.max() > sr / 2 - 200:
            break
        sig += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**tilt
    return sig


def _adsr(length: int, sr: int, attack: float = 0.03, release: float = 0.08) -> np.ndarray:
    env = np.ones(length)
    a, r = min(int(attack * sr), length // 2), min(int(release * sr), length // 2)
    env[:a] = np.linspace(0, 1, a)
    if r:
        env[-r:] = np.linspace(1, 0, r)
    return env


def screams(rng: np.random.Generator, n: int, sr: int, t0: float) -> np.ndarray:
    """1-3 high-pitched screams (f0 0.8-1.6 kHz, rise-fall contour, vibrato) (scatter)."""
    out = np.zeros(n)
    active = np.zeros(n, bool)
    t = t0
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.uniform(0.5, 1.3) * sr)
        u = np.linspace(0, 1, length)
        base = rng.uniform(800, 1600)
        contour = base * (1 + 0.25 * np.sin(np.pi * u) * rng.uniform(0.3, 1.0))
        vib = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(5, 8) * u * length / sr)
        sig = _harmonic(rng, length, sr, contour * vib, 4, 1.2)
        sig += 0.2 * rng.standard_normal(length)  # breath
        sig *= _adsr(length, sr, 0.05, 0.15)
        at = int(t * sr)
        _place(out, sig, at)
        active[max(at, 0) : max(at + length, 0)] = True
        t += rng.uniform(0.2, 0.9)
    return _unit_rms(out, active)


def shouts(rng: np.random.Generator, n: int, sr: int, t0: float, until: float) -> np.ndarray:
    """Repeated low, harsh shouted syllables (f0 150-320 Hz, many harmonics) (fight)."""
    out = np.zeros(n)
    active = np.zeros(n, bool)
    t = t0
    while t < until:
        length = int(rng.uniform(0.25, 0.7) * sr)
        u = np.linspace(0, 1, length)
        f0 = rng.uniform(150, 320) * (1 + 0.15 * np.sin(np.pi * u))
        sig = _harmonic(rng, length, sr, f0, 25, 0.7)
        sig = np.tanh(2.5 * sig / (np.abs(sig).max() + 1e-9))  # strained voice
        sig *= _adsr(length, sr, 0.02, 0.06)
        at = int(t * sr)
        _place(out, sig, at)
        active[max(at, 0) : max(at + length, 0)] = True
        t += length / sr + rng.uniform(0.1, 0.5)
    return _unit_rms(out, active)


def whistle_or_siren(
    rng: np.random.Generator, n: int, sr: int, t0: float, until: float
) -> np.ndarray:
    """A police whistle (2.5-3.6 kHz trilled blasts) or a wailing siren (arrest)."""
    out = np.zeros(n)
    active = np.zeros(n, bool)
    top = min(3600.0, sr / 2 - 400)
    if rng.random() < 0.6:
        t = t0
        while t < until:
            length = int(rng.uniform(0.3, 0.8) * sr)
            f = rng.uniform(2500, top)
            trill = 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(22, 35) * np.arange(length) / sr)
            sig = np.sin(2 * np.pi * f * np.arange(length) / sr) * trill * _adsr(length, sr)
            at = int(t * sr)
            _place(out, sig, at)
            active[max(at, 0) : max(at + length, 0)] = True
            t += length / sr + rng.uniform(0.15, 0.8)
    else:
        start = int(t0 * sr)
        length = max(int(until * sr) - start, int(0.5 * sr))
        period = rng.uniform(0.8, 2.5)
        tt = np.arange(length) / sr
        f0 = 950 + 350 * np.sin(2 * np.pi * tt / period + rng.uniform(0, 2 * np.pi))
        sig = _harmonic(rng, length, sr, f0, 3, 1.0) * _adsr(length, sr, 0.1, 0.1)
        _place(out, sig, start)
        active[max(start, 0) : max(start + length, 0)] = True
    return _unit_rms(out, active)


def thud(rng: np.random.Generator, n: int, sr: int, t0: float) -> np.ndarray:
    """A body hitting the ground: a low decaying sine plus the impact's noise burst (knockdown).

    Both sit inside VGGish's mel range (125 Hz - 7.5 kHz): a 50-110 Hz thud with 20-400 Hz
    noise would lie mostly below it, and the network could barely hear a knockdown."""
    out = np.zeros(n)
    length = int(0.5 * sr)
    tau = rng.uniform(0.05, 0.14)
    f = rng.uniform(130, 220)
    tt = np.arange(length) / sr
    body = np.sin(2 * np.pi * f * tt) * _decay(length, sr, tau)
    impact = _bandpass(rng.standard_normal(length), sr, 130, 1500)
    body += 0.8 * impact * _decay(length, sr, tau / 2)
    at = int(t0 * sr)
    _place(out, body, at)
    active = np.zeros(n, bool)
    active[max(at, 0) : max(at + int(2 * tau * sr), 0)] = True
    return _unit_rms(out, active)


def footsteps(
    rng: np.random.Generator, n: int, sr: int, t0: float, until: float, rate_hz: float
) -> np.ndarray:
    """Periodic short mid-band clicks with a low thump, at ``rate_hz`` steps per second."""
    out = np.zeros(n)
    active = np.zeros(n, bool)
    length = int(0.06 * sr)
    t = t0
    while t < until:
        tau = rng.uniform(0.006, 0.015)
        step = _bandpass(rng.standard_normal(length), sr, 400, 4000) * _decay(length, sr, tau)
        step += 0.6 * np.sin(2 * np.pi * 90 * np.arange(length) / sr) * _decay(length, sr, 0.02)
        step *= rng.uniform(0.6, 1.0)
        at = int(t * sr)
        _place(out, step, at)
        active[max(at, 0) : max(at + int(0.04 * sr), 0)] = True
        t += (1.0 / rate_hz) * rng.uniform(0.9, 1.1)
    return _unit_rms(out, active)
