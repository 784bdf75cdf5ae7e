"""Media: probe, frames of time spans, audio + VGGish log-mel (pure functions, no Ray);
``open_media`` turns a storage URI (local or S3) into what they read.

PyAV (and resampy, for audio) are imported where used so importing this package is cheap.
"""

from avrl_batch.media.audio import decode_audio, window_logmel
from avrl_batch.media.errors import (
    DecodeFailed,
    EmptyFile,
    ExceedsCaps,
    MediaError,
    NotMedia,
    NoVideoStream,
    Truncated,
)
from avrl_batch.media.logmel import (
    examples_for_duration,
    log_mel_examples,
    log_mel_examples_fixed,
    to_mono_16k,
)
from avrl_batch.media.probe import MediaCaps, MediaInfo, open_media, probe
from avrl_batch.media.video import DecodeStats, Window, decode_frames, iter_windows, sample_times

__all__ = [
    "DecodeFailed",
    "DecodeStats",
    "EmptyFile",
    "ExceedsCaps",
    "MediaCaps",
    "MediaError",
    "MediaInfo",
    "NoVideoStream",
    "NotMedia",
    "Truncated",
    "Window",
    "decode_audio",
    "decode_frames",
    "examples_for_duration",
    "iter_windows",
    "log_mel_examples",
    "log_mel_examples_fixed",
    "open_media",
    "probe",
    "sample_times",
    "to_mono_16k",
    "window_logmel",
]
