"""The cascade's screening stage (plain functions, no Ray): cheap features of every window of
a recording, a logistic regression over them, and its threshold calibrated for a recall.

Features come from one pass over the file that decodes no inter frame:

- video, from demuxing alone: the bytes of the window's inter (P/B) packets — an encoder
  spends bits where the picture changes, so this is a motion proxy — their mean, largest and
  spread, and the keyframe's bytes;
- video, keyframes only (``skip_frame="NONKEY"``, one I-frame per GOP): the mean absolute
  difference of a 16-pixel-block grey thumbnail from the previous and the next keyframe;
- audio (decode + decimate to 16 kHz mono): log-mel energy in eight band groups, the
  loudest 10 ms frame, the frames' spread and the spectral flux; and, where the model has an
  audio branch, that branch's own feature of the window (:class:`AudioNet`: the model file's
  VGGish trunk on the log-mel the screen computes anyway, ``audio_net_dim`` values; a few
  CPU-ms a window on one thread), the strongest cheap signal of what the model will hear.

Each feature is taken relative to the recording's own median (footage is calm most of the
time, so the median is the calm level of that camera, whatever its resolution, bitrate or
microphone gain), and each window also sees the larger of its two neighbours' values.
A recording without audio is screened by the video-only head; one with audio by the
audio-visual head. The video-only head keeps the keyframe features only where the windows
they spare the full model outweigh decoding them (``video_keyframes``, ``KEYFRAME_COST``): an
I-frame of 720p costs about a quarter of what inferring its window does.
Each head's threshold is set on held-out windows for a target recall of the labelled
anomalies — by default of the events (one is seen when any of its windows is a candidate) of
each anomaly class on its own, so that a quiet class (a knockdown: one fall, one thud) is not
outvoted by the loud ones (``train/calibrate.calibrate``). A screen belongs to the network it
was calibrated with (``model_id``): its audio features are that network's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SCREEN_FORMAT = 3  # 3: the audio branch's feature, the model it belongs to, keyframes chosen
KEY_BLOCK = 16  # px: keyframe thumbnails are means over KEY_BLOCK x KEY_BLOCK blocks
AUDIO_BANDS = 8  # groups of the 64 log-mel bands
PACKET_BASE = ("inter_bytes", "inter_mean", "inter_max", "inter_spread", "key_bytes")
KEYFRAME_BASE = ("key_diff_prev", "key_diff_next")
AUDIO_BASE = (*(f"mel_band{b}" for b in range(AUDIO_BANDS)), "mel_loudest", "mel_spread",
              "mel_flux")
# a window overlapping an anomaly for at least this share of its length is a positive
POSITIVE_OVERLAP = 0.5
DEFAULT_RECALL = 0.97
RECALL_OF = ("events", "windows")  # what a screen's target recall counts
DEFAULT_MARGIN_WINDOWS = 1  # windows decoded each side of a candidate
CV_FOLDS = 4  # contiguous parts of each recording: out-of-fold scores set the threshold
L2 = 1e-1  # strong: few anomalies of each kind to learn from, it must not learn one kind
Z_CLIP = 30.0


def _with_context(names: Sequence[str]) -> tuple[str, ...]:
    return (*names, *(f"{n}_nbr" for n in names))


# the video-only head (cameras without audio): packets, and keyframes where they pay; the
# audio-visual head needs no decoded picture at all
PACKET_FEATURES = _with_context(PACKET_BASE)
VIDEO_FEATURES = _with_context((*PACKET_BASE, *KEYFRAME_BASE))
# Decoding a window's keyframe costs about this share of inferring the window fully: 9.9 against
# 43 CPU-ms a 2-s window of 720p H.264 with a keyframe every 2 s (docs/performance.md, the
# cascade's profile). The video-only head keeps the keyframe features only when they cut the
# share of windows passed by more than that, per keyframe a window.
KEYFRAME_COST = 0.23


def video_features(keyframes: bool) -> tuple[str, ...]:
    return VIDEO_FEATURES if keyframes else PACKET_FEATURES


def packet_columns(x: np.ndarray) -> np.ndarray:
    """The packet-only columns (PACKET_FEATURES) of VIDEO_FEATURES rows (N, 14) -> (N, 10)."""
    keep = [VIDEO_FEATURES.index(n) for n in PACKET_FEATURES]
    return x[:, keep]


def av_features(audio_net_dim: int) -> tuple[str, ...]:
    """The audio-visual head's features with an audio trunk of ``audio_net_dim`` outputs."""
    return _with_context(
        (*PACKET_BASE, *AUDIO_BASE, *(f"audio_net{i}" for i in range(audio_net_dim)))
    )


def n_windows(duration_s: float, stride_s: float) -> int:
    """Windows of a recording: one starts at each multiple of the stride before its end
    (as ``media/video._plan_windows`` and ``plan.segment_ranges`` count them)."""
    if not (duration_s > 0 and math.isfinite(duration_s)):
        return 0
    return max(1, math.ceil(duration_s / stride_s - 1e-9))


@dataclass(frozen=True)
class WindowFeatures:
    """The screen's features of one recording's windows."""

    start_s: np.ndarray  # float64 (N,)
    end_s: np.ndarray  # float64 (N,)
    # float64 (N, len(VIDEO_FEATURES)) with the keyframes decoded, else
    # (N, len(PACKET_FEATURES)): packets only
    video: np.ndarray
    av: np.ndarray | None  # float64 (N, len(av_features(dim))); None: the file has no audio
    keyframes: int = 0  # keyframe packets of the file (what decoding them would cost)

    def __len__(self) -> int:
        return len(self.start_s)


class AudioNet:
    """The model's audio branch (its VGGish trunk) as plain arrays, small and picklable, so a
    scan ships it once (``ray.put``) to the screening tasks; :meth:`embed` builds the torch
    module once per process and runs it on one thread (the screen runs beside the decoders,
    one core each)."""

    BATCH = 32  # windows a forward pass

    def __init__(self, audio_width: int, batchnorm: bool, n_examples: int, dim: int,
                 state: dict[str, np.ndarray]) -> None:
        self.audio_width, self.batchnorm, self.n_examples = audio_width, batchnorm, n_examples
        self.dim = dim  # the trunk's outputs: ModelConfig.audio_dim
        self.state = state
        self._module: Any = None

    @classmethod
    def from_model(cls, model: Any, cfg: Any) -> AudioNet | None:
        """The audio trunk of an AVRL network (``modelfile.LoadedModel.model``); None when it
        has no audio branch."""
        trunk = getattr(model, "audio", None)
        if trunk is None:
            return None
        state = {k: v.detach().cpu().numpy().copy() for k, v in trunk.state_dict().items()}
        return cls(int(cfg.audio_width), bool(cfg.audio_batchnorm), int(cfg.audio_examples),
                   int(cfg.audio_dim), state)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_module": None}  # the torch module is rebuilt where it lands

    def embed(self, examples: np.ndarray) -> np.ndarray:
        """(B, E, 96, 64) log-mel examples -> (B, dim) float64: what the model's audio
        branch makes of each window (its f_a)."""
        import torch

        if self._module is None:
            from avrl_batch.model.vggish import VGGishTrunk

            net = VGGishTrunk(audio_width=self.audio_width, batchnorm=self.batchnorm)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
            self._module = net.eval()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                out = self._module(torch.from_numpy(np.ascontiguousarray(examples, np.float32)))
        finally:
            torch.set_num_threads(threads)
        return out.numpy().astype(np.float64)


class _AudioWindows:
    """16 kHz mono audio in arrival order -> per-window raw audio features (and the audio
    net's feature), streaming (the buffer holds about one window of samples, whatever the
    file's length)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, net: AudioNet | None) -> None:
        from avrl_batch.media import logmel

        self.sr = logmel.SAMPLE_RATE
        self.starts, self.ends = starts, ends
        self.net = net
        dim = net.dim if net is not None else 0
        self.out = np.full((len(starts), len(AUDIO_BASE) + dim), np.nan)
        self.pending: list[tuple[int, np.ndarray]] = []  # (window, (E, 96, 64)) to embed
        self.buf = np.zeros(0, np.float32)
        self.buf_t0: float | None = None  # time of buf[0] on the video timeline
        self.next = 0

    def add(self, samples: np.ndarray, t: float | None) -> None:
        if self.buf_t0 is None:
            self.buf_t0 = t if t is not None else 0.0
        self.buf = np.concatenate([self.buf, samples.astype(np.float32)])
        self._drain(final=False)

    def finish(self) -> np.ndarray:
        self._drain(final=True)
        self._embed()
        return self.out

    def _drain(self, *, final: bool) -> None:
        if self.buf_t0 is None:
            return
        buf_end = self.buf_t0 + len(self.buf) / self.sr
        while self.next < len(self.starts) and (final or self.ends[self.next] <= buf_end):
            i = self.next
            a = max(0, int(round((self.starts[i] - self.buf_t0) * self.sr)))
            b = max(a, int(round((self.ends[i] - self.buf_t0) * self.sr)))
            self._window(i, self.buf[a:b])
            self.next += 1
            # keep what the next window needs (windows may overlap: stride < window)
            if self.next < len(self.starts):
                keep = max(0, int((self.starts[self.next] - self.buf_t0) * self.sr))
                if keep:
                    self.buf = self.buf[keep:]
                    self.buf_t0 += keep / self.sr
        if len(self.pending) >= AudioNet.BATCH:
            self._embed()

    def _window(self, i: int, wave: np.ndarray) -> None:
        from avrl_batch.media import logmel

        mel = logmel.log_mel_spectrogram(wave)  # (F, 64)
        self.out[i, : len(AUDIO_BASE)] = _audio_stats(mel)
        if self.net is None or not len(wave):
            return
        e = self.net.n_examples
        if len(mel) >= logmel.EXAMPLE_FRAMES * e:  # the examples are the spectrogram's start
            ex = logmel.frame_examples(mel)[:e]
        else:  # a short last window: padded with silence as the model's input is
            ex = logmel.log_mel_examples_16k_fixed(wave, e)
        self.pending.append((i, ex))

    def _embed(self) -> None:
        if self.net is None or not self.pending:
            return
        idx = [i for i, _ in self.pending]
        self.out[idx, len(AUDIO_BASE):] = self.net.embed(np.stack([x for _, x in self.pending]))
        self.pending = []


def _audio_stats(mel: np.ndarray) -> np.ndarray:
    """(len(AUDIO_BASE),): band-group energies, loudest frame, spread, flux of a span's
    log-mel spectrogram (F, 64)."""
    if len(mel) < 2:
        return np.full(len(AUDIO_BASE), np.nan)
    bands = mel.reshape(len(mel), AUDIO_BANDS, -1).mean(axis=2)  # (F, 8)
    frame_energy = mel.mean(axis=1)  # (F,)
    flux = np.maximum(np.diff(mel, axis=0), 0).mean()
    return np.array([*bands.mean(axis=0), frame_energy.max(), frame_energy.std(), flux])


class _Decimator:
    """Decoded audio frames -> mono float32 at rate / ``factor``: a box filter over groups of
    ``factor`` samples (the features are band energies, not the model's input), with the
    samples left over carried into the next group, so the audio keeps its length: dropping
    them (1 of AAC's 1,024-sample frames at 48 kHz) would put it 1.8 s behind the picture
    after 30 minutes. Frames are joined ``BATCH`` at a time, so numpy's per-call cost is
    paid once a batch rather than once a 21-ms frame."""

    BATCH = 64

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.frames: list[np.ndarray] = []
        self.rest = np.zeros(0, np.float32)

    def add(self, frame: Any) -> np.ndarray | None:
        from avrl_batch.media.audio import frame_to_mono

        self.frames.append(frame_to_mono(frame))
        return self.flush() if len(self.frames) >= self.BATCH else None

    def flush(self) -> np.ndarray:
        x = np.concatenate([self.rest, *self.frames])
        self.frames = []
        n = (len(x) // self.factor) * self.factor
        self.rest = x[n:]
        return x[:n].reshape(-1, self.factor).mean(axis=1)


def _thumb(frame: Any) -> np.ndarray:
    """Grey block means of a decoded keyframe: float32 (H/KEY_BLOCK, W/KEY_BLOCK)."""
    plane = frame.planes[0]  # the luma plane, read in place (no pixel-format conversion)
    y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    h, w = (y.shape[0] // KEY_BLOCK) * KEY_BLOCK, (y.shape[1] // KEY_BLOCK) * KEY_BLOCK
    blocks = y[:h, :w].reshape(h // KEY_BLOCK, KEY_BLOCK, w // KEY_BLOCK, KEY_BLOCK)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def window_features(
    src: Any, duration_s: float, window_s: float, stride_s: float, *,
    keyframes: bool | None = None, audio_net: AudioNet | None = None, caps: Any = None,
) -> WindowFeatures:
    """The screen's features of every window of ``src`` (a path or file object; the windows
    of a scan with this window and stride), in one pass that decodes keyframes and audio only.

    ``keyframes``: decode the keyframes (the keyframe features of the video-only head); None:
    only when the file has no audio stream. ``audio_net``: the model's audio trunk, whose
    feature of each window joins the audio-visual features (None: no such columns)."""
    import av

    from avrl_batch.media.errors import source_name, wrap_errors
    from avrl_batch.media.probe import MediaCaps, inspect, open_container, time_origin

    n = n_windows(duration_s, stride_s)
    starts = np.arange(n, dtype=np.float64) * stride_s  # (N,)
    ends = np.minimum(starts + window_s, duration_s)  # (N,)
    name = source_name(src)
    pkt_t: list[float] = []
    pkt_bytes: list[int] = []
    pkt_key: list[bool] = []
    key_t: list[float] = []
    key_img: list[np.ndarray] = []
    with wrap_errors(name, stage="screening"):
        container = open_container(src, name)
        try:
            inspect(container, name, caps or MediaCaps())
            vs = container.streams.video[0]
            vs.codec_context.skip_frame = "NONKEY"
            origin = time_origin(container, vs)
            astream = container.streams.audio[0] if container.streams.audio else None
            audio = _AudioWindows(starts, ends, audio_net) if astream is not None else None
            audio_t0: float | None = None  # the time of the first audio frame
            decode_keys = astream is None if keyframes is None else keyframes
            rate = astream.codec_context.sample_rate if astream is not None else 0
            # 48 or 32 kHz: a box filter and every 3rd / 2nd sample; other rates through
            # FFmpeg's resampler
            factor = rate // 16_000 if rate and rate % 16_000 == 0 else 0
            decimator = _Decimator(factor) if audio is not None and factor else None
            resampler = (
                av.AudioResampler(format="flt", layout="mono", rate=16_000)
                if audio is not None and not factor
                else None
            )
            streams = [vs] + ([astream] if astream is not None else [])
            for packet in container.demux(*streams):
                if packet.stream.type == "video":
                    if packet.pts is None or packet.time_base is None:
                        continue  # the demuxer's flush packet
                    pkt_t.append(float(packet.pts * packet.time_base) - origin)
                    pkt_bytes.append(packet.size)
                    pkt_key.append(bool(packet.is_keyframe))
                    if decode_keys and packet.is_keyframe:  # only I-frames are decoded
                        for frame in packet.decode():
                            key_t.append(float(frame.time) - origin)
                            key_img.append(_thumb(frame))
                elif audio is not None:
                    for frame in packet.decode():
                        if audio_t0 is None and frame.time is not None:
                            audio_t0 = float(frame.time) - origin
                        if decimator is not None:
                            got = decimator.add(frame)
                            if got is not None:
                                audio.add(got, audio_t0)
                        elif resampler is not None:
                            for out in resampler.resample(frame):
                                audio.add(out.to_ndarray().reshape(-1), audio_t0)
            if audio is not None:  # what the decimator or the resampler still holds
                if decimator is not None:
                    audio.add(decimator.flush(), audio_t0)
                elif resampler is not None:
                    for out in resampler.resample(None):
                        audio.add(out.to_ndarray().reshape(-1), audio_t0)
            if decode_keys:
                for frame in vs.codec_context.decode(None):  # frames still in the decoder
                    key_t.append(float(frame.time) - origin)
                    key_img.append(_thumb(frame))
        finally:
            container.close()
    packets = _packet_stats(
        starts, ends, np.array(pkt_t), np.array(pkt_bytes, np.float64), np.array(pkt_key, bool)
    )
    raw_video = packets
    if decode_keys:
        raw_video = np.concatenate(
            [packets, _keyframe_stats(starts, ends, np.array(key_t), key_img)], axis=1
        )
    av_rel = None
    if audio is not None:
        av_rel = _context(_relative(np.concatenate([packets, audio.finish()], axis=1)))
    return WindowFeatures(starts, ends, _context(_relative(raw_video)), av_rel,
                          keyframes=int(sum(pkt_key)))


def _packet_stats(
    starts: np.ndarray, ends: np.ndarray, pkt_t: np.ndarray, pkt_bytes: np.ndarray,
    pkt_key: np.ndarray,
) -> np.ndarray:
    """(N, len(PACKET_BASE)) raw packet features (log bytes) of each window."""
    out = np.full((len(starts), len(PACKET_BASE)), np.nan)
    if not len(pkt_t):
        return out
    sort = np.argsort(pkt_t, kind="stable")  # decode order -> presentation order
    pkt_t, pkt_bytes, pkt_key = pkt_t[sort], pkt_bytes[sort], pkt_key[sort]
    lo = np.searchsorted(pkt_t, starts, side="left")
    hi = np.searchsorted(pkt_t, ends, side="left")
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        inter = pkt_bytes[a:b][~pkt_key[a:b]]
        key = pkt_bytes[a:b][pkt_key[a:b]]
        if len(inter):
            li = np.log1p(inter)
            out[i, 0:4] = (np.log1p(inter.sum()), li.mean(), li.max(), li.std())
        if len(key):
            out[i, 4] = np.log1p(key.mean())
    return out


def _keyframe_stats(
    starts: np.ndarray, ends: np.ndarray, key_t: np.ndarray, key_img: list[np.ndarray]
) -> np.ndarray:
    """(N, len(KEYFRAME_BASE)): log thumbnail difference of the window's first keyframe from
    the previous and the next keyframe."""
    out = np.full((len(starts), len(KEYFRAME_BASE)), np.nan)
    order = np.argsort(key_t, kind="stable")
    key_t = key_t[order]
    imgs = [key_img[i] for i in order]
    diffs = np.array(
        [float(np.abs(imgs[i] - imgs[i - 1]).mean()) for i in range(1, len(imgs))]
    )  # (K-1,): diffs[i-1] between keyframes i-1 and i
    klo = np.searchsorted(key_t, starts, side="left")
    for i in range(len(starts)):
        k = int(klo[i])  # the first keyframe in (or after) the window
        if k < len(key_t) and key_t[k] < ends[i]:
            if 1 <= k <= len(diffs):
                out[i, 0] = np.log1p(diffs[k - 1])
            if k < len(diffs):
                out[i, 1] = np.log1p(diffs[k])
    return out


def _relative(raw: np.ndarray) -> np.ndarray:
    """Each feature as a robust z-score over the recording: minus its median, over its
    median absolute deviation (the calm spread of that camera); missing values (a window
    without a keyframe, audio that ended) are the median (0). Clipped to [-Z_CLIP, Z_CLIP]."""
    if not len(raw):
        return raw
    with np.errstate(all="ignore"):
        med = np.nanmedian(raw, axis=0)  # (F,) all-NaN columns give NaN
        med = np.where(np.isfinite(med), med, 0.0)
        mad = np.nanmedian(np.abs(raw - med), axis=0) * 1.4826  # (F,): sigma of calm windows
    mad = np.where(np.isfinite(mad) & (mad > 1e-6), mad, 1.0)
    z = (raw - med) / mad
    return np.clip(np.where(np.isfinite(z), z, 0.0), -Z_CLIP, Z_CLIP)


def _context(x: np.ndarray) -> np.ndarray:
    """(N, F) -> (N, 2F): each window's features and the larger of its neighbours'."""
    if not len(x):
        return np.zeros((0, 2 * x.shape[1]))
    prev = np.vstack([x[:1], x[:-1]])
    nxt = np.vstack([x[1:], x[-1:]])
    return np.concatenate([x, np.maximum(prev, nxt)], axis=1)


# ---------------------------------------------------------------------------------------
# the classifier


@dataclass(frozen=True)
class ScreenHead:
    """One logistic regression over standardised features, and its calibrated threshold."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float  # a window is a candidate when its score is >= this
    # on the held-out (out-of-fold) windows the threshold was set on:
    val_windows: int
    val_positives: int
    val_recall: float  # share of positive windows among the candidates (margin included)
    val_pass_share: float  # share of all windows that are candidates (what the model sees)
    val_events: int  # anomaly events (intervals with a positive window)
    val_event_recall: float  # share of them with a candidate among their positive windows
    # the recall, and the positives, per anomaly class: of events or of windows, as the
    # threshold was set (Screen.recall_of)
    val_recall_by_class: dict[str, float]
    val_positives_by_class: dict[str, int]

    def score(self, x: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) probability that the window overlaps an anomaly."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(z @ np.asarray(self.weights) + self.bias)


@dataclass(frozen=True)
class Screen:
    """What ``avrl calibrate`` writes into a model file (``screen``) and a cascade scan reads."""

    format: int
    model_id: str  # the network it was calibrated for: its audio feature is that network's
    window_s: float  # the windows it was trained on (the model's)
    target_recall: float
    per_class: bool  # target_recall held by each anomaly class, not only pooled
    recall_of: str  # "events": an event counts when one of its windows is a candidate; "windows"
    margin_windows: int
    positive_overlap: float
    audio_net_dim: int  # the audio branch's feature size in the AV head; 0: not used
    video_keyframes: bool  # the video-only head uses the keyframe features (decodes I-frames)
    video: ScreenHead  # recordings without audio
    av: ScreenHead | None  # recordings with audio; None when the data had none
    trained_on: str  # the intervals tables, separated by ", "
    recordings: int
    windows: int
    positives: int
    positives_by_class: dict[str, int]  # positive windows of each anomaly class
    events_by_class: dict[str, int]  # anomaly events of each class

    @property
    def needs_audio_net(self) -> bool:
        return self.av is not None and self.audio_net_dim > 0

    def scores(self, feats: WindowFeatures) -> tuple[str, np.ndarray]:
        """(head used, (N,) screen scores): the audio-visual head where the file has audio."""
        if feats.av is not None and self.av is not None:
            if feats.av.shape[1] != len(self.av.features):
                raise ValueError(
                    f"the audio-visual head takes {len(self.av.features)} features, got "
                    f"{feats.av.shape[1]} (the audio net's feature missing?)"
                )
            return "av", self.av.score(feats.av)
        if feats.video.shape[1] != len(self.video.features):
            raise ValueError(
                f"the video-only head takes {len(self.video.features)} features, got "
                f"{feats.video.shape[1]} (keyframes decoded or not, as the screen says?)"
            )
        return "video", self.video.score(feats.video)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Screen:
        """A screen from a model file's ``screen`` entry; ValueError naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError("screen is not a mapping")
        want = {f for f in cls.__dataclass_fields__}
        if set(d) != want:
            raise ValueError(f"screen fields differ: {sorted(set(d) ^ want)}")
        if d["format"] != SCREEN_FORMAT:
            raise ValueError(f"screen format {d['format']!r:.20} is not {SCREEN_FORMAT}")
        for k in ("window_s", "target_recall", "positive_overlap"):
            _finite(d[k], k)
        if not (0 < d["target_recall"] <= 1):
            raise ValueError("screen target_recall must lie in (0, 1]")
        for k in ("margin_windows", "recordings", "windows", "positives", "audio_net_dim"):
            if not isinstance(d[k], int) or isinstance(d[k], bool) or not 0 <= d[k] < 10**9:
                raise ValueError(f"screen {k} must be a count")
        if d["audio_net_dim"] > _largest_audio_dim():
            raise ValueError("screen audio_net_dim is larger than any audio branch")
        for k in ("trained_on", "model_id"):
            if not isinstance(d[k], str):
                raise ValueError(f"screen {k} must be a string")
        for k in ("per_class", "video_keyframes"):
            if not isinstance(d[k], bool):
                raise ValueError(f"screen {k} must be true or false")
        if d["recall_of"] not in RECALL_OF:
            raise ValueError(f"screen recall_of must be one of {', '.join(RECALL_OF)}")
        _counts(d["positives_by_class"], "positives_by_class")
        _counts(d["events_by_class"], "events_by_class")
        video = _head(d["video"], video_features(d["video_keyframes"]), "video")
        av_head = (
            None if d["av"] is None else _head(d["av"], av_features(d["audio_net_dim"]), "av")
        )
        return cls(**{**d, "video": video, "av": av_head})


def _largest_audio_dim() -> int:
    from avrl_batch.config import LIMITS, ModelConfig

    widest = ModelConfig(audio_width=int(LIMITS["audio_width"][1]))
    return widest.audio_dim


def _finite(v: Any, what: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"screen {what} must be a finite number")
    return float(v)


def _head(d: Any, names: tuple[str, ...], what: str) -> ScreenHead:
    if not isinstance(d, dict) or set(d) != set(ScreenHead.__dataclass_fields__):
        raise ValueError(f"screen {what} head fields differ from ScreenHead's")
    if tuple(d["features"]) != names:
        raise ValueError(f"screen {what} head features are not this version's")
    vec = {}
    for k in ("mean", "scale", "weights"):
        if not isinstance(d[k], (list, tuple)) or len(d[k]) != len(names):
            raise ValueError(f"screen {what} {k} must have {len(names)} values")
        vec[k] = tuple(_finite(v, f"{what} {k}") for v in d[k])
    if min(vec["scale"]) <= 0:
        raise ValueError(f"screen {what} scale must be positive")
    for k in ("bias", "threshold", "val_recall", "val_pass_share", "val_event_recall"):
        _finite(d[k], f"{what} {k}")
    for k in ("val_windows", "val_positives", "val_events"):
        if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0:
            raise ValueError(f"screen {what} {k} must be a count")
    _counts(d["val_positives_by_class"], f"{what} val_positives_by_class")
    by_class = d["val_recall_by_class"]
    if not isinstance(by_class, dict) or not all(isinstance(k, str) for k in by_class):
        raise ValueError(f"screen {what} val_recall_by_class must map class names to numbers")
    for k, v in by_class.items():
        _finite(v, f"{what} val_recall_by_class {k}")
    return ScreenHead(**{**d, "features": names, **vec})


def _counts(d: Any, what: str) -> None:
    if not isinstance(d, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in d.items()
    ):
        raise ValueError(f"screen {what} must map class names to counts")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = L2) -> tuple[np.ndarray, float,
                                                                            np.ndarray, np.ndarray]:
    """Class-balanced L2 logistic regression by Newton's method on standardised features.

    ``y`` (N,): 0 for a negative window, else the positive window's anomaly class (any
    positive number; all 1 when classes are not told apart). Negatives and positives weigh
    half each, and the positives' half is shared equally by their classes, so a class with
    few windows counts as much as a frequent one.
    Returns (weights (F,), bias, mean (F,), scale (F,))."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])  # (N, F+1): bias column last
    sw = _balanced_weights(y)  # (N,)
    y = (y > 0).astype(np.float64)
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2 * len(y))
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(50):
        p = _sigmoid(z @ w)
        grad = z.T @ (sw * (p - y)) + reg * w
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:-1], float(w[-1]), mean, scale


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """(N,) sample weights of ``fit_logistic``: negatives N/2 in all, each positive class
    N / (2 * classes) in all."""
    w = np.zeros(len(y))
    neg = y <= 0
    w[neg] = len(y) / (2 * max(int(neg.sum()), 1))
    classes = np.unique(y[~neg])
    for c in classes:
        at = y == c
        w[at] = len(y) / (2 * len(classes) * int(at.sum()))
    return w


def _units(
    labels: Sequence[np.ndarray], events: Sequence[np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a recall counts, over the recordings' windows concatenated: (positive (N,) bool,
    unit (P,) the index of each positive window's unit, unit_class (U,)). A unit is a
    positive window, or with ``events`` (per-recording (N,) ids, 0 for none) an event."""
    y = np.concatenate(labels) if labels else np.zeros(0)
    positive = y > 0
    if events is None:
        key = np.flatnonzero(positive)
    else:
        offsets = np.cumsum([0, *(int(e.max(initial=0)) + 1 for e in events)])[:-1]
        key = np.concatenate([e + o for e, o in zip(events, offsets, strict=True)])[positive]
    uid, unit = np.unique(key, return_inverse=True)
    unit_class = np.zeros(len(uid))
    unit_class[unit] = y[positive]
    return positive, unit, unit_class


def threshold_for_recall(
    scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], recall: float, margin: int,
    *, per_class: bool = False, events: Sequence[np.ndarray] | None = None,
) -> float:
    """The largest threshold at which the candidates (scores >= it, widened by ``margin``
    windows: what a cascade scan decodes) still cover ``recall`` of the positive windows of
    these recordings (per-recording (N,) scores and labels: 0 negative, else the window's
    class); ``per_class``: ``recall`` of each class's positive windows. With ``events``
    (per-recording (N,) event ids of the positive windows), the recall is of events: one is
    covered when any of its positive windows is a candidate."""
    positive, unit, unit_class = _units(labels, events)
    if not positive.any():
        return 0.0
    groups = np.unique(unit_class) if per_class else np.array([-1.0])
    member = [unit_class == g if g >= 0 else np.ones(len(unit_class), bool) for g in groups]
    need = np.array([m.sum() for m in member]) * recall - 1e-9  # (G,)
    levels = np.unique(np.concatenate([s[y > 0] for s, y in zip(scores, labels, strict=True)]))
    for thr in levels[::-1]:  # from the highest: the first that covers enough is the largest
        hit = np.concatenate([candidates(s, float(thr), margin) for s in scores])[positive]
        covered = np.zeros(len(unit_class), bool)
        np.logical_or.at(covered, unit, hit)
        if all((covered & m).sum() >= n for m, n in zip(member, need, strict=True)):
            return float(thr)
    return float(levels[0])


def train_head(
    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], names: tuple[str, ...], recall: float,
    margin: int, *, class_names: Sequence[str] = ("anomaly",), per_class: bool = False,
    events: Sequence[np.ndarray] | None = None, recall_of_events: bool = False,
) -> ScreenHead:
    """A head from per-recording (features, labels: 0 negative, k the class
    ``class_names[k - 1]``; ``events``: the positive windows' event ids, 0 none): out-of-fold
    scores over CV_FOLDS contiguous parts of every recording set the threshold
    (``per_class``: ``recall`` of each class; ``recall_of_events``: of its events, else of
    its windows); the weights are then fitted on all of them."""
    folds = [np.minimum((np.arange(len(y)) * CV_FOLDS) // max(len(y), 1), CV_FOLDS - 1)
             for y in ys]
    x_all, y_all, f_all = np.vstack(xs), np.concatenate(ys), np.concatenate(folds)
    oof = np.zeros(len(y_all))
    for f in range(CV_FOLDS):
        test = f_all == f
        if not test.any() or not (y_all[~test] > 0).any():
            continue
        w, b, m, s = fit_logistic(x_all[~test], y_all[~test])
        oof[test] = _sigmoid(((x_all[test] - m) / s) @ w + b)
    bounds = np.cumsum([0, *(len(y) for y in ys)])
    per_rec = [oof[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if events is None:  # no event ids: each positive window is an event of its own
        events = [np.where(y > 0, np.arange(1, len(y) + 1), 0) for y in ys]
    thr = threshold_for_recall(per_rec, ys, recall, margin, per_class=per_class,
                               events=events if recall_of_events else None)
    w, b, m, s = fit_logistic(x_all, y_all)
    masks = [candidates(sc, thr, margin) for sc in per_rec]
    passed = np.concatenate(masks) if masks else np.zeros(0, bool)
    npos = int((y_all > 0).sum())
    present = [(k, name) for k, name in enumerate(class_names, start=1) if (y_all == k).any()]
    positive, unit, unit_class = _units(ys, events)
    seen = np.zeros(len(unit_class), bool)  # (U,) events with a candidate window
    np.logical_or.at(seen, unit, passed[positive])
    # the per-class figures count what the threshold was set on: events or windows
    hits, of = (seen, unit_class) if recall_of_events else (passed[positive], y_all[positive])
    return ScreenHead(
        features=names,
        mean=tuple(map(float, m)),
        scale=tuple(map(float, s)),
        weights=tuple(map(float, w)),
        bias=b,
        threshold=thr,
        val_windows=len(y_all),
        val_positives=npos,
        val_recall=float(passed[y_all > 0].mean()) if npos else 0.0,
        val_pass_share=float(passed.mean()) if len(passed) else 0.0,
        val_events=len(unit_class),
        val_event_recall=float(seen.mean()) if len(seen) else 0.0,
        val_recall_by_class={name: float(hits[of == k].mean()) for k, name in present},
        val_positives_by_class={name: int((of == k).sum()) for k, name in present},
    )


def window_labels(
    starts: np.ndarray, ends: np.ndarray, intervals: Iterable[tuple[float, float]]
) -> np.ndarray:
    """(N,) 1.0 where a window overlaps the anomaly intervals for >= POSITIVE_OVERLAP of it."""
    overlap = np.zeros(len(starts))
    for a, b in intervals:
        overlap += np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0, None)
    length = np.maximum(ends - starts, 1e-9)
    return (overlap / length >= POSITIVE_OVERLAP).astype(np.float64)


def window_events(
    starts: np.ndarray, ends: np.ndarray, intervals: Sequence[tuple[float, float]]
) -> np.ndarray:
    """(N,) int: 0 where ``window_labels`` gives 0, else 1 + the index of the interval that
    overlaps the window most (the event the window belongs to)."""
    positive = window_labels(starts, ends, intervals) > 0
    best = np.zeros(len(starts))
    out = np.zeros(len(starts), np.int64)
    for k, (a, b) in enumerate(intervals, start=1):
        overlap = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0, None)
        more = overlap > best
        out[more], best[more] = k, overlap[more]
    return np.where(positive, out, 0)


def window_classes(
    starts: np.ndarray, ends: np.ndarray, intervals: Iterable[tuple[float, float, int]]
) -> np.ndarray:
    """(N,) int: 0 where ``window_labels`` gives 0, else the class (>= 1) of the interval
    (start, end, class) that overlaps the window most."""
    spans = list(intervals)
    owner = window_events(starts, ends, [(a, b) for a, b, _ in spans])
    return np.r_[0, [k for _, _, k in spans]].astype(np.int64)[owner]


def candidates(scores: np.ndarray, threshold: float, margin: int) -> np.ndarray:
    """(N,) bool: windows scored at or above the threshold, widened by ``margin`` windows
    each side (an event's first and last windows score lower than its middle)."""
    hit = scores >= threshold
    out = hit.copy()
    for k in range(1, margin + 1):
        out[k:] |= hit[:-k]
        out[:-k] |= hit[k:]
    return out


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges ``[first, last]`` of the True runs of ``mask``."""
    out = []
    i, n = 0, len(mask)
    while i < n:
        if mask[i]:
            j = i
            while j + 1 < n and mask[j + 1]:
                j += 1
            out.append((i, j))
            i = j + 1
        else:
            i += 1
    return out
