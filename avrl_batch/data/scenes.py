"""Synthetic scenes: people as simple figures on a textured plaza, and each class's episode.

Coordinates are normalised: x and y in [0, 1] of the frame width and height (y down), sizes
in frame heights. An ``Episode`` is what one class adds to a scene over its duration: the
figures' tracks (one value per frame) and the acoustic cue (one value per audio sample).
Visual and acoustic cues are designed pairwise (see ``CLASS_CUES``): shoot and scatter move
the same way and differ by ear, fight and arrest look alike and differ by ear, run and chase
sound the same and differ by eye, normal1 and normal2 sound the same and differ by eye.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avrl_batch.data import sounds

# one line per class: (what it looks like, what it sounds like); the README quotes these
CLASS_CUES: dict[str, tuple[str, str]] = {
    "arrest": (
        "two people converge and stay together, one holding the other (small struggle)",
        "police whistle blasts (2.5-3.6 kHz, trilled) or a wailing siren",
    ),
    "chase": ("two people sprint across the scene, one right behind the other", "fast footsteps"),
    "fight": (
        "two people converge and jostle together (large jitter)",
        "harsh low shouting (f0 150-320 Hz, many harmonics)",
    ),
    "knockdown": ("a standing person falls and lies flat", "a low thud when the body lands"),
    "run": ("one person sprints across the scene", "fast footsteps (the same as chase)"),
    "shoot": (
        "a gathered group bursts outward (the same motion as scatter)",
        "1-4 gunshots: broadband impulses with a short echo",
    ),
    "scatter": (
        "a gathered group bursts outward (the same motion as shoot)",
        "screams (f0 0.8-1.6 kHz, vibrato)",
    ),
    "normal1": ("people wandering slowly at random", "crowd babble only"),
    "normal2": ("people in a queue (a line) shuffling forward step by step", "crowd babble only"),
}

MARGIN = 0.06  # figures stay this far inside the frame unless they leave on purpose
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): the pixels img[y0:y1, x0:x1]


@dataclass
class Track:
    """One figure over an episode: per-frame centre, fall fraction and visibility."""

    x: np.ndarray  # (F,)
    y: np.ndarray  # (F,)
    h: float  # standing body height, frame heights
    w: float  # body width, frame heights
    color: np.ndarray  # (3,) RGB in [0, 1]
    fall: np.ndarray | None = None  # (F,) 0 standing .. 1 lying flat
    visible: np.ndarray | None = None  # (F,) bool


@dataclass
class Episode:
    label: str
    n_frames: int
    tracks: list[Track] = field(default_factory=list)
    audio: np.ndarray | None = None  # (N,) unit-RMS cue, or None (normal classes)


def random_figure(rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
    h = rng.uniform(0.14, 0.22)
    return h, h * rng.uniform(0.3, 0.42), rng.uniform(0.1, 0.95, 3).astype(np.float32)


def wander(
    rng: np.random.Generator,
    n: int,
    fps: float,
    speed: tuple[float, float] = (0.03, 0.09),
    start: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A slow random walk reflected at the frame margins; returns x, y of shape (n,)."""
    p = np.array(start if start is not None else rng.uniform(MARGIN, 1 - MARGIN, 2))
    v = rng.uniform(*speed)
    ang = rng.uniform(0, 2 * np.pi)
    out = np.empty((n, 2))
    for i in range(n):
        p, ang = wander_step(rng, p, ang, v, fps)
        out[i] = p
    return out[:, 0], out[:, 1]


def wander_step(
    rng: np.random.Generator, p: np.ndarray, ang: float, v: float, fps: float
) -> tuple[np.ndarray, float]:
    """One frame of ``wander``: the heading drifts, the figure moves ``v`` frame widths a
    second, and it reflects off the frame margins. Returns the new position and heading."""
    ang += rng.normal(0, 0.35)
    p = p + v / fps * np.array([np.cos(ang), np.sin(ang)])  # (2,) x, y
    for d in range(2):
        if not MARGIN <= p[d] <= 1 - MARGIN:
            p[d] = np.clip(p[d], MARGIN, 1 - MARGIN)
            ang = np.pi - ang if d == 0 else -ang
    return p, ang


class Passersby:
    """People wandering through footage of any length, stepped frame by frame (the walk of
    ``wander``, which would hold a whole recording's track in memory)."""

    def __init__(self, rng: np.random.Generator, count: int, fps: float) -> None:
        self.rng, self.fps = rng, fps
        self.people = []
        for _ in range(count):
            h, w, c = random_figure(rng)
            self.people.append([h, w, c, rng.uniform(0.1, 0.9, 2), rng.uniform(0, 2 * np.pi)])
        self.speeds = rng.uniform(0.03, 0.09, count)

    def step_and_draw(self, img: np.ndarray) -> list[Box]:
        """Move everyone one frame on and draw them onto ``img`` (H, W, 3) float in place;
        the boxes drawn into."""
        boxes = []
        for person, v in zip(self.people, self.speeds, strict=True):
            h, w, c, p, ang = person
            p, ang = wander_step(self.rng, p, ang, v, self.fps)
            person[3], person[4] = p, ang
            boxes += draw_figure(img, float(p[0]), float(p[1]), h, w, 0.0, c)
        return boxes


def passersby_tracks(rng: np.random.Generator, n: int, fps: float, count: int) -> list[Track]:
    tracks = []
    for _ in range(count):
        h, w, c = random_figure(rng)
        x, y = wander(rng, n, fps)
        tracks.append(Track(x, y, h, w, c))
    return tracks


def _crossing(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points on opposite sides, just outside the frame."""
    y0, y1 = rng.uniform(0.2, 0.85, 2)
    a, b = np.array([-0.08, y0]), np.array([1.08, y1])
    if rng.random() < 0.5:
        a, b = b, a
    if rng.random() < 0.3:  # sometimes top to bottom instead
        a, b = a[::-1].copy(), b[::-1].copy()
    return a, b


def _sprints(
    rng: np.random.Generator, tt: np.ndarray, t0: float, runners: int
) -> tuple[list[Track], list[tuple[float, float]]]:
    """Runners (1 = run, 2 = chase, the second behind the first) crossing one after another
    from t0 to the episode end; returns their tracks and the (start, end) of each sprint."""
    tracks: list[Track] = []
    spans = []
    end = tt[-1] + 1e-6 if len(tt) else 0.0
    t = t0
    while t < end:
        a, b = _crossing(rng)
        cross = rng.uniform(0.9, 1.5)
        lag = rng.uniform(0.15, 0.35)
        for k in range(runners):
            h, w, c = random_figure(rng)
            u = (tt - t - k * lag) / cross  # (F,) 0..1 while on screen
            vis = (u >= 0) & (u <= 1)
            uc = np.clip(u, 0, 1)[:, None]
            p = a + (b - a) * uc + np.array([0, 0.01]) * np.sin(uc * 40)  # bobbing stride
            tracks.append(Track(p[:, 0], p[:, 1], h, w, c, visible=vis))
        spans.append((t, t + cross + (runners - 1) * lag))
        t += cross + (runners - 1) * lag + rng.uniform(0.0, 0.4)
    return tracks, spans


def _pair_meeting(
    rng: np.random.Generator, tt: np.ndarray, t_meet: float, jitter: float, drift: float
) -> list[Track]:
    """Two figures walk towards a point, meet at t_meet, then stay together jittering by
    ``jitter`` (frame heights, per frame) and drifting together at ``drift`` per second."""
    m = rng.uniform(0.3, 0.7, 2)
    ang = rng.uniform(0, 2 * np.pi)
    drift_dir = np.array([np.cos(ang), np.sin(ang)]) * drift
    tracks = []
    for side in (-1, 1):
        h, w, c = random_figure(rng)
        d = rng.uniform(0.15, 0.3)
        start = m + np.array([side * d, rng.uniform(-0.1, 0.1)])
        contact = m + np.array([side * w * 0.6, 0.0])
        u = np.clip(tt / max(t_meet, 1e-3), 0, 1)[:, None]
        p = start + (contact - start) * u  # (F, 2) approach
        after = tt > t_meet
        p[after] += drift_dir * (tt[after] - t_meet)[:, None]
        p[after] += rng.normal(0, jitter, (int(after.sum()), 2))
        p = np.clip(p, MARGIN, 1 - MARGIN)
        tracks.append(Track(p[:, 0], p[:, 1], h, w, c))
    return tracks


def _burst(rng: np.random.Generator, tt: np.ndarray, t0: float) -> list[Track]:
    """A gathered group that mills about, then runs radially outward from t0 (shoot and
    scatter share this motion on purpose)."""
    c = rng.uniform(0.3, 0.7, 2)
    radius = rng.uniform(0.07, 0.14)
    tracks = []
    for _ in range(int(rng.integers(5, 11))):
        h, w, col = random_figure(rng)
        ang = rng.uniform(0, 2 * np.pi)
        r0 = radius * np.sqrt(rng.random())
        p0 = c + r0 * np.array([np.cos(ang), np.sin(ang)])
        out_dir = np.array([np.cos(ang), np.sin(ang)])
        speed = rng.uniform(0.3, 0.6)
        start = t0 + rng.uniform(0, 0.2)
        dt = np.clip(tt - start, 0, None)[:, None]
        p = p0 + out_dir * speed * dt + rng.normal(0, 0.003, (len(tt), 2))
        vis = (p[:, 0] > -0.1) & (p[:, 0] < 1.1) & (p[:, 1] > -0.1) & (p[:, 1] < 1.1)
        tracks.append(Track(p[:, 0], p[:, 1], h, w, col, visible=vis))
    return tracks


QUEUE_STEP_S = 0.3  # one shuffle step of a person in a queue takes this long


def _queue(rng: np.random.Generator, tt: np.ndarray) -> list[Track]:
    """People in a line shuffling forward along it: every ``period`` seconds each one takes a
    short step, the step passing down the line from the front (a ripple).

    The steps are what a model sees: a line of standing people is static, and a static scene is
    what background suppression (ModelConfig.subtract_background) removes; a queue that never
    moved looked like an empty plaza, and the tiny AV model called every calm clip a queue.
    """
    n = int(rng.integers(4, 9))
    ang = rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
    direction = np.array([np.cos(ang), np.sin(ang)])
    spacing = rng.uniform(0.07, 0.11)
    head = rng.uniform(0.35, 0.65, 2) - direction * spacing * (n - 1) / 2
    period = rng.uniform(0.6, 1.2)  # s between one person's steps
    step = rng.uniform(0.03, 0.06)  # frame heights per step
    ripple = rng.uniform(0.1, 0.2)  # s from one person's step to the next one's
    phase = rng.uniform(0.0, period)
    tracks = []
    for k in range(n):
        h, w, c = random_figure(rng)
        u = np.maximum((tt + phase - k * ripple) / period, 0.0)  # (F,) steps begun
        done = np.floor(u) + np.clip((u - np.floor(u)) * period / QUEUE_STEP_S, 0, 1)
        p = (
            head
            - direction * step * done[:, None]  # towards the front (k = 0)
            + direction * k * spacing
            + rng.normal(0, 0.002, (len(tt), 2))
        )
        tracks.append(Track(p[:, 0], p[:, 1], h, w, c))
    return tracks


def make_episode(
    label: str,
    rng: np.random.Generator,
    duration_s: float,
    fps: float,
    sr: int,
    onset: float | None = None,
) -> Episode:
    """The figures and the sound that ``label`` adds to a scene over ``duration_s``.

    ``onset`` (seconds) is when the cue starts; by default it is drawn at random early in the
    episode so that a clip always contains the cue.
    """
    n = max(int(round(duration_s * fps)), 1)
    tt = np.arange(n) / fps  # (F,)
    ns = int(round(duration_s * sr))
    t0 = rng.uniform(0.0, 0.25) * duration_s if onset is None else onset
    ep = Episode(label, n)
    if label in ("run", "chase"):
        if onset is None:
            # a clip cut from running footage starts anywhere in a crossing, as a scan window
            # inside a long recorded run or chase does (crossings follow each other with at most
            # 0.4 s between them, so runners are on screen for most of any clip)
            t0 = -rng.uniform(0.0, 1.5)
        ep.tracks, spans = _sprints(rng, tt, t0, 1 if label == "run" else 2)
        rate = rng.uniform(*sounds.FOOTSTEP_RUN_HZ)
        audio = np.zeros(ns, np.float32)
        for a, b in spans:
            audio += sounds.footsteps(rng, ns, sr, a, min(b, duration_s), rate)
        ep.audio = audio / max(len(spans), 1) ** 0.5
    elif label in ("fight", "arrest"):
        t_meet = t0 + rng.uniform(0.2, 0.5)
        if label == "fight":
            ep.tracks = _pair_meeting(rng, tt, t_meet, rng.uniform(0.01, 0.03), 0.0)
            ep.audio = sounds.shouts(rng, ns, sr, t_meet - 0.2, duration_s)
        else:
            ep.tracks = _pair_meeting(
                rng, tt, t_meet, rng.uniform(0.004, 0.018), rng.uniform(0.0, 0.05)
            )
            ep.audio = sounds.whistle_or_siren(rng, ns, sr, t0, duration_s)
    elif label == "knockdown":
        h, w, c = random_figure(rng)
        x, y = wander(rng, n, fps, speed=(0.03, 0.1))
        t_fall = t0 + rng.uniform(0.1, 0.5)
        fall_s = rng.uniform(0.15, 0.35)
        fall = np.clip((tt - t_fall) / fall_s, 0, 1)
        # once down the figure stays where it fell
        down = int(np.searchsorted(tt, t_fall))
        if down < n:
            x[down:], y[down:] = x[down], y[down]
        ep.tracks = [Track(x, y, h, w, c, fall=fall)]
        ep.audio = sounds.thud(rng, ns, sr, t_fall + fall_s)
    elif label in ("shoot", "scatter"):
        burst_at = t0 + rng.uniform(0.1, 0.4)
        ep.tracks = _burst(rng, tt, burst_at)
        if label == "shoot":
            ep.audio = sounds.gunshots(rng, ns, sr, burst_at - rng.uniform(0.0, 0.15))
        else:
            ep.audio = sounds.screams(rng, ns, sr, burst_at + rng.uniform(-0.1, 0.2))
    elif label == "normal1":
        # a calm scene: the clip's passers-by plus up to two more people strolling
        ep.tracks = passersby_tracks(rng, n, fps, int(rng.integers(0, 3)))
    elif label == "normal2":
        ep.tracks = _queue(rng, tt)
    else:
        raise ValueError(f"unknown class {label!r}")
    return ep


# ---------------------------------------------------------------------------------------
# rendering


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static plaza: base colour, low-frequency texture, paving lines, a few blocks.
    Returns (H, W, 3) float32 in [0, 1]."""
    base = rng.uniform(0.3, 0.7, 3)
    coarse = rng.uniform(-0.12, 0.12, (6, 6, 1))
    yi = np.linspace(0, 5, height)
    xi = np.linspace(0, 5, width)
    # bilinear upsampling of the coarse grid, separable: rows then columns
    rows = np.stack([np.interp(yi, np.arange(6), coarse[:, j, 0]) for j in range(6)], 1)  # (H, 6)
    tex = np.stack([np.interp(xi, np.arange(6), rows[i]) for i in range(height)], 0)  # (H, W)
    img = base[None, None, :] + tex[:, :, None]
    step = int(rng.integers(max(height // 8, 4), max(height // 4, 6)))
    img[::step, :, :] *= 0.85
    img[:, ::step, :] *= 0.85
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        bh, bw = (
            int(rng.integers(height // 10, height // 4)),
            int(rng.integers(width // 10, width // 3)),
        )
        img[y0 : y0 + bh, x0 : x0 + bw] = rng.uniform(0.1, 0.9, 3)
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _ellipse(
    img: np.ndarray, cy: float, cx: float, ry: float, rx: float, color: np.ndarray
) -> list[Box]:
    """Fill an ellipse; the box it may have drawn into (none when it lies outside)."""
    height, width = img.shape[:2]
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, height)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, width)
    if y0 >= y1 or x0 >= x1:
        return []
    yy = (np.arange(y0, y1)[:, None] + 0.5 - cy) / max(ry, 0.5)
    xx = (np.arange(x0, x1)[None, :] + 0.5 - cx) / max(rx, 0.5)
    mask = yy**2 + xx**2 <= 1.0
    img[y0:y1, x0:x1][mask] = color
    return [(y0, y1, x0, x1)]


HEAD_COLOR = np.array([0.55, 0.4, 0.3], np.float32)


def draw_figure(
    img: np.ndarray, x: float, y: float, h: float, w: float, fall: float, color: np.ndarray
) -> list[Box]:
    """A body ellipse and a head disc; ``fall`` 0..1 tilts the figure from standing to lying.
    Returns the boxes drawn into."""
    height, width = img.shape[:2]
    s = height  # sizes are in frame heights
    bh = h * (1 - 0.72 * fall)
    bw = w * (1 + 1.8 * fall)
    cx, cy = x * width, y * height
    boxes = _ellipse(img, cy, cx, bh * s / 2, bw * s / 2, color)
    r = w * s * 0.45
    hx = cx + fall * (bw * s / 2 + r * 0.8)
    hy = cy - (1 - fall) * (bh * s / 2 + r * 0.8)
    return boxes + _ellipse(img, hy, hx, r, r, HEAD_COLOR)


def draw_tracks(img: np.ndarray, tracks: list[Track], i: int) -> list[Box]:
    """Draw frame ``i`` of every visible track; the boxes drawn into."""
    # far (small y) first so that nearer figures cover them
    order = sorted(range(len(tracks)), key=lambda k: float(tracks[k].y[i]))
    boxes = []
    for k in order:
        t = tracks[k]
        if t.visible is not None and not t.visible[i]:
            continue
        fall = float(t.fall[i]) if t.fall is not None else 0.0
        boxes += draw_figure(img, float(t.x[i]), float(t.y[i]), t.h, t.w, fall, t.color)
    return boxes


@dataclass(frozen=True)
class Lighting:
    """Sensor model: out = clip(gain * scene + cast + N(0, noise^2)) per pixel and frame."""

    gain: float
    noise: float
    cast: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @staticmethod
    def draw(rng: np.random.Generator, dark: bool) -> Lighting:
        if dark:
            # night: almost no light, heavy sensor noise, a blue cast
            return Lighting(rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.07), (0.0, 0.01, 0.03))
        return Lighting(rng.uniform(0.7, 1.05), rng.uniform(0.005, 0.02))

    def expose(self, rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
        out = scene * self.gain + np.asarray(self.cast, np.float32)
        out += rng.normal(0, self.noise, scene.shape).astype(np.float32)
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)

    def expose_with(self, scene: np.ndarray, unit_noise: np.ndarray) -> np.ndarray:
        """``expose`` with the noise given as N(0, 1) float32 of the scene's shape (drawn
        ahead of time: at 720p drawing it per frame costs 5x the encoding)."""
        out = scene * np.float32(self.gain) + np.asarray(self.cast, np.float32)
        out += unit_noise * np.float32(self.noise)
        np.clip(out, 0, 1, out=out)
        return (out * 255 + 0.5).astype(np.uint8)
