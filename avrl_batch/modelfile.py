"""The AVRL model file: one self-describing file holding config, classes, normalisation, weights.

Layout (a ``torch.save`` dict of plain types and tensors, so ``torch.load(weights_only=True)``
reads it and never runs code from the file):

    {"format": "avrl-model", "version": 1, "model_id": "avrl-<preset>-<12 hex>",
     "config": ModelConfig.to_dict(), "class_names": [...], "normal_classes": [...],
     "mean": [...], "std": [...],
     "state_dict": {name: tensor}, "meta": {JSON-like: training metrics, provenance}}

``model_id`` is a content hash of config + weights: the same network always gets the same id,
so scan outputs keyed by it are reproducible and a retrained model never collides.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avrl_batch.config import ModelConfig
from avrl_batch.errors import AvrlError, WeightsError

FORMAT = "avrl-model"
VERSION = 1


@dataclass
class LoadedModel:
    model: torch.nn.Module  # in eval mode, on the CPU
    cfg: ModelConfig
    model_id: str
    meta: dict[str, Any] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def model_id_for(
    cfg: ModelConfig | Mapping[str, Any], state_dict: dict[str, torch.Tensor]
) -> str:
    """Deterministic short id from the config and every tensor's name, dtype, shape and bytes.

    ``cfg`` may be the config dict as stored in a model file: a file is checked against the
    config it was saved with, not against that config re-serialised by this version of
    ModelConfig (a field added later, with its default, would change every old file's hash
    and reject it as corrupt)."""
    data = cfg.to_dict() if isinstance(cfg, ModelConfig) else dict(cfg)
    h = hashlib.sha256()
    h.update(json.dumps(data, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"avrl-{data.get('preset')}-{h.hexdigest()[:12]}"


def model_to_bytes(
    model: torch.nn.Module, cfg: ModelConfig, meta: dict[str, Any] | None = None
) -> bytes:
    """Serialise ``model`` (any device; DDP-wrapped is fine) with its config into file bytes."""
    return _serialise(model, cfg, meta)[0]


def _serialise(
    model: torch.nn.Module, cfg: ModelConfig, meta: dict[str, Any] | None
) -> tuple[bytes, str]:
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    inner = getattr(inner, "_orig_mod", inner)  # and torch.compile
    state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    try:  # only JSON-like metadata is loadable with weights_only=True
        meta_plain = json.loads(json.dumps(meta or {}))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"model metadata must be JSON-like: {_first_line(exc)}") from exc
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_id": model_id_for(cfg, state),
        "config": cfg.to_dict(),
        "class_names": list(cfg.class_names),
        "normal_classes": list(cfg.normal_classes),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "state_dict": state,
        "meta": meta_plain,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue(), payload["model_id"]


def load_weights_only(data: bytes | str | os.PathLike[str], source: str) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one WeightsError line."""
    try:
        f: Any = io.BytesIO(data) if isinstance(data, bytes | bytearray) else os.fspath(data)
        return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"{source}: file not found") from exc
    except IsADirectoryError as exc:
        raise WeightsError(f"{source}: is a directory, expected a weights file") from exc
    except Exception as exc:  # noqa: BLE001 - zip, unpickling and weights-only refusals alike
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise WeightsError(
                f"{source}: refused, the file holds pickled objects beyond plain tensors "
                "(only weights_only-loadable files are accepted)"
            ) from exc
        raise WeightsError(
            f"{source}: not a readable PyTorch weights file ({_first_line(exc)})"
        ) from exc


def model_from_bytes(
    data: bytes | str | os.PathLike[str], source: str = "<model bytes>"
) -> LoadedModel:
    """Rebuild the network stored in model-file bytes (or a local file's path); the model is
    returned in eval mode.

    The network is built on the meta device and takes the loaded tensors as its own
    (``load_state_dict(assign=True)``): no random initialisation to overwrite, and the peak
    memory is the file's tensors once instead of twice (plus ``data`` while the caller holds it).
    """
    from avrl_batch.model import build_model

    payload = load_weights_only(data, source)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(
            f"{source}: not an AVRL model file (make one with `avrl train` or "
            "`avrl import-weights`)"
        )
    if payload.get("version") != VERSION:
        raise WeightsError(
            f"{source}: model file version {payload.get('version')!r} is not "
            f"supported (this avrl reads version {VERSION})"
        )
    try:
        cfg = ModelConfig.from_dict(payload["config"])
        with torch.device("meta"):
            model = build_model(cfg)
        keys = model.load_state_dict(payload["state_dict"], strict=False, assign=True)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        missing = keys.missing_keys or left
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RuntimeError(f"no weights for {missing[0]}{more}")
        if keys.unexpected_keys:
            raise RuntimeError(f"weights for no layer of this network: {keys.unexpected_keys[0]}")
    except AvrlError as exc:
        raise WeightsError(f"{source}: {exc}") from exc
    except (KeyError, TypeError, RuntimeError) as exc:
        # load_state_dict's own errors open with a heading line; the cause is on the next one
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else None
        raise WeightsError(
            f"{source}: model file is inconsistent ({why or _first_line(exc)})"
        ) from exc
    model_id = model_id_for(payload["config"], payload["state_dict"])
    if model_id != payload.get("model_id"):
        raise WeightsError(
            f"{source}: content does not match its model id "
            f"{payload.get('model_id')!r} (file altered or corrupt)"
        )
    model.eval()
    return LoadedModel(model=model, cfg=cfg, model_id=model_id, meta=dict(payload.get("meta", {})))


def save_model(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write a model file atomically (temp + fsync + rename); returns its model id."""
    data, model_id = _serialise(model, cfg, meta)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model_id


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a local model file; any problem is one WeightsError line naming the file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: model file not found")
    return model_from_bytes(p, source=str(p))  # torch reads the tensors straight from the file
