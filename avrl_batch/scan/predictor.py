"""The inference actor of a scan: loads the model once, turns window batches into class
probabilities (Ray Data ``map_batches`` with an actor pool; see pipeline.py).

Rows that are segment trailers (``kind != "window"``) pass through without touching the
model. Frames and log-mel are dropped from the output; only windows that may become the
peak of an event keep a small JPEG of their middle frame, so what flows back to the
driver stays a few hundred bytes per window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from avrl_batch.memory import peak_rss_mb
from avrl_batch.scan.decode import WINDOW

PASS_THROUGH = (
    "key",
    "source_uri",
    "segment_index",
    "kind",
    "window_index",
    "start_s",
    "end_s",
    "has_audio",
    "n_windows",
    "error_type",
    "message",
    "decode_node",
    "rss_mb",
)


class Predictor:
    """``__call__(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` for map_batches.

    ``model_ref`` is a one-element list holding the ObjectRef of the model-file bytes (a list
    so that Ray hands the ref itself to the constructor; it is fetched here, once per actor,
    from whichever node holds it: a model file on the driver's disk works on any cluster).
    """

    def __init__(
        self,
        model_ref: list[Any],
        anomaly_index: list[int],
        thumb_threshold: float,
        timeline_mode: str = "incident",
        threads: int | None = None,
    ) -> None:
        import ray
        import torch

        from avrl_batch.modelfile import model_from_bytes

        if threads is not None:
            # intra-op threads of the convs (pipeline._pool), no more than the cores this
            # process may run on: more threads than cores only contend
            import os

            torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))
        loaded = model_from_bytes(ray.get(model_ref[0]), source="scan model")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        # channels_last_3d for the 3D-ResNet (its weights and input): the same arithmetic in
        # a layout oneDNN/cuDNN convolve faster (bench model: 1.24-1.46x on CPU, fp32)
        self.channels_last = self.model.video is not None
        if self.channels_last:
            self.model.video.to(memory_format=torch.channels_last_3d)
        self.cfg = loaded.cfg
        self.anomaly_index = np.asarray(anomaly_index, dtype=np.int64)
        self.thumb_threshold = float(thumb_threshold)
        self.timeline_mode = timeline_mode
        self.node_id = ray.get_runtime_context().get_node_id()
        self.windows_seen = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from avrl_batch.model import video_input
        from avrl_batch.scan.timeline import jpeg_thumbnail, window_level

        kind = np.asarray(batch["kind"])
        idx = np.flatnonzero(kind == WINDOW)
        n, c = len(kind), self.cfg.num_classes
        probs = np.zeros((n, c), np.float32)
        if len(idx):
            frames = torch.from_numpy(np.ascontiguousarray(batch["frames"][idx]))  # (B,T,H,W,3) u8
            logmel = torch.from_numpy(np.ascontiguousarray(batch["logmel"][idx]))  # (B,E,96,64)
            has_audio = torch.from_numpy(np.asarray(batch["has_audio"][idx], dtype=bool))
            on_gpu = self.device.type == "cuda"
            with torch.inference_mode(), torch.autocast(
                device_type=self.device.type, dtype=torch.float16, enabled=on_gpu
            ):
                # uint8 crosses to the device; normalising happens there (a quarter the bytes)
                video = video_input(
                    frames.to(self.device, non_blocking=on_gpu), self.cfg.mean, self.cfg.std
                )
                if self.channels_last:
                    video = video.contiguous(memory_format=torch.channels_last_3d)
                audio = logmel.to(self.device, non_blocking=on_gpu).float()
                logits = self.model(video, audio, has_audio.to(self.device))
                probs[idx] = torch.softmax(logits.float(), dim=1).cpu().numpy()  # (B, C)
            self.windows_seen += len(idx)
        thumbs = np.empty(n, dtype=object)
        thumbs[:] = b""
        if len(idx) and len(self.anomaly_index):
            # the windows an event can show (timeline.window_level at or above exit)
            peak = window_level(probs[:, self.anomaly_index], self.timeline_mode)  # (n,)
            for i in idx[peak[idx] >= self.thumb_threshold]:
                frames_i = batch["frames"][i]  # (T, H, W, 3)
                thumbs[i] = jpeg_thumbnail(np.asarray(frames_i[len(frames_i) // 2]))
        out = {name: np.asarray(batch[name]) for name in PASS_THROUGH if name in batch}
        out["probs"] = probs
        out["thumbnail"] = thumbs
        out["infer_node"] = np.full(n, self.node_id, dtype=object)
        # this actor's peak RSS (MiB), for the scan summary
        out["infer_rss_mb"] = np.full(
            n, peak_rss_mb(), np.float64
        )
        return out
