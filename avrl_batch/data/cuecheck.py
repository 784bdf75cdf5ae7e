"""A sanity check of the synthetic cue design, without the network.

Hand-made per-clip features (audio band energies, frame-difference motion statistics) and a
softmax regression in numpy, trained on the train split and scored on the test split with
audio only, video only, and both. If the generator has the intended structure, both beats
each modality alone, and the gain over video is larger on the dark clips.

    python -m avrl_batch.data.cuecheck data/bench/manifest.parquet

It prints each feature set's mean per-class test accuracy (all, light and dark clips), the
confusion matrix of both, per-class test accuracies, and the gain of both over video. A
development tool run from the shell (docs/training.md), so nothing in the package imports it;
tests/test_synth.py runs it on the ci preset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from avrl_batch.classes import SHADE

SR = 16_000
N_BANDS = 24


def _audio(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        if not c.streams.audio:
            return np.zeros(SR, np.float32)
        rs = av.AudioResampler(format="flt", layout="mono", rate=SR)
        parts = []
        for frame in c.decode(audio=0):
            for f in rs.resample(frame):
                parts.append(f.to_ndarray().reshape(-1))
        for f in rs.resample(None):
            parts.append(f.to_ndarray().reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(SR, np.float32)


def _frames(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack(
            [f.to_ndarray(format="gray").astype(np.float32) / 255 for f in c.decode(video=0)]
        )  # (T, H, W)


def audio_features(wave: np.ndarray) -> np.ndarray:
    win, hop = 400, 160
    n = 1 + max(len(wave) - win, 0) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]  # (n, win)
    spec = np.abs(np.fft.rfft(wave[idx] * np.hanning(win), axis=1)) ** 2  # (n, 201)
    freqs = np.fft.rfftfreq(win, 1 / SR)
    edges = np.geomspace(40, SR / 2, N_BANDS + 1)
    bands = np.stack(
        [
            spec[:, (freqs >= lo) & (freqs < hi)].sum(1)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ],
        1,
    )  # (n, N_BANDS)
    logb = np.log(bands + 1e-10)
    logb -= np.median(logb, axis=0, keepdims=True)  # relative to the clip's own background
    flux = np.diff(np.log(spec.sum(1) + 1e-10))
    return np.concatenate(
        [logb.max(0), logb.std(0), np.percentile(logb, 90, axis=0), [flux.max(), flux.std()]]
    )


def _blobs(mask: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Centroids (N, 2) and width/height ratios of the connected regions of a binary mask."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros((0, 2)), []
    idx = np.arange(1, n + 1)
    cents = np.array(ndimage.center_of_mass(mask, lab, idx)).reshape(n, 2)
    ratios = [
        (sl[1].stop - sl[1].start) / (sl[0].stop - sl[0].start)
        for sl in ndimage.find_objects(lab)
        if sl is not None
    ]
    return cents, ratios


def video_features(frames: np.ndarray) -> np.ndarray:
    """Motion and figure statistics: people are what differs from the clip's median frame."""
    t, h, w = frames.shape
    diff = np.abs(np.diff(frames, axis=0))  # (T-1, H, W)
    energy = diff.mean((1, 2))
    bg = np.median(frames, axis=0)  # (H, W) the empty scene, people move
    dev = np.abs(frames - bg)  # (T, H, W)
    noise = 1.4826 * np.median(dev) + 1e-3
    counts, moving, lin, spread, ratio = [], [], [], [], []
    for i in range(t):
        cents, ratios = _blobs(dev[i] > max(4 * noise, 0.03))
        counts.append(len(cents))
        ratio.append(max(ratios) if ratios else 0.0)
        if len(cents) >= 3:
            ev = np.linalg.eigvalsh(np.cov(cents.T))  # ascending
            lin.append(ev[0] / (ev[1] + 1e-6))
        if len(cents) >= 2:
            spread.append(float(np.linalg.norm(cents - cents.mean(0), axis=1).mean()) / h)
        if i:
            moving.append(len(_blobs(diff[i - 1] > max(4 * noise, 0.03))[0]))
    counts_a, moving_a = np.array(counts, float), np.array(moving, float)
    sp = np.array(spread) if spread else np.zeros(2)
    third = max(len(sp) // 3, 1)
    return np.array(
        [
            energy.mean(),
            energy.max(),
            energy.std(),
            frames.mean(),
            noise,
            counts_a.mean(),
            counts_a.max(),
            counts_a.std(),
            moving_a.mean(),
            moving_a.max(),
            np.median(lin) if lin else 1.0,
            sp.mean(),
            sp[-third:].mean() - sp[:third].mean(),
            np.median(ratio),
            max(ratio),
            ratio[-1] - ratio[0],
            (diff > max(4 * noise, 0.03)).mean(),
        ]
    )


def softmax_regression(x: np.ndarray, y: np.ndarray, k: int, steps: int = 3000) -> np.ndarray:
    """Weights (D+1, K) of an L2-regularised multinomial logistic regression (full batch GD)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    wts = np.zeros((xb.shape[1], k))
    onehot = np.eye(k)[y]
    for _ in range(steps):
        z = xb @ wts
        z -= z.max(1, keepdims=True)
        pr = np.exp(z)
        pr /= pr.sum(1, keepdims=True)
        wts -= 0.5 * (xb.T @ (pr - onehot) / len(x) + 1e-3 * wts)
    return wts


def mean_class_acc(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(k) if np.any(y == c)]))


def main(manifest: str) -> None:
    import pyarrow.parquet as pq

    from avrl_batch.data.synth import resolve_uri

    rows = pq.read_table(manifest).to_pylist()
    fa, fv = [], []
    for r in rows:
        path = resolve_uri(manifest, r["uri"])
        fa.append(audio_features(_audio(path)))
        fv.append(video_features(_frames(path)))
    fa_arr, fv_arr = np.array(fa), np.array(fv)
    y = np.array([SHADE.names.index(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    dark = np.array([r["dark"] for r in rows])
    k = len(SHADE.names)
    print(f"clips: {train.sum()} train, {(~train).sum()} test ({(dark & ~train).sum()} dark)")
    print(f"{'features':<8} {'all':>6} {'light':>6} {'dark':>6}")
    results = {}
    preds = {}
    for name, feats in (
        ("audio", fa_arr),
        ("video", fv_arr),
        ("both", np.hstack([fa_arr, fv_arr])),
    ):
        mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-6
        xs = (feats - mu) / sd
        wts = softmax_regression(xs[train], y[train], k)
        pred = (np.hstack([xs, np.ones((len(xs), 1))]) @ wts).argmax(1)
        te = ~train
        accs = [mean_class_acc(pred[m], y[m], k) for m in (te, te & ~dark, te & dark)]
        results[name] = accs
        preds[name] = pred
        print(f"{name:<8} " + " ".join(f"{100 * a:6.1f}" for a in accs))
        if name == "both":
            cm = np.zeros((k, k), int)
            np.add.at(cm, (y[te], pred[te]), 1)
            print("confusion (rows true, cols predicted):", " ".join(c[:5] for c in SHADE.names))
            for c in range(k):
                print(f"  {SHADE.names[c]:<9}", " ".join(f"{v:3d}" for v in cm[c]))
    print("per-class test accuracy (audio / video / both):")
    for c in range(k):
        m = ~train & (y == c)
        print(
            f"  {SHADE.names[c]:<9}",
            " ".join(f"{100 * np.mean(preds[n][m] == c):5.0f}" for n in ("audio", "video", "both")),
        )
    gain_all = results["both"][0] - results["video"][0]
    gain_dark = results["both"][2] - results["video"][2]
    print(f"both - video: {100 * gain_all:+.1f} all, {100 * gain_dark:+.1f} dark")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path("data/bench/manifest.parquet")))
