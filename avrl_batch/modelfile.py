"""The AVRL model file: one self-describing file holding config, classes, normalisation, weights.

Layout (a ``torch.save`` dict of plain types and tensors, so ``torch.load(weights_only=True)``
reads it and never runs code from the file):

    {"format": "avrl-model", "version": 1, "model_id": "avrl-<preset>-<12 hex>",
     "config": ModelConfig.to_dict(), "class_names": [...], "normal_classes": [...],
     "mean": [...], "std": [...],
     "state_dict": {name: tensor}, "meta": {JSON-like: training metrics, provenance},
     "screen": {...}}  # optional: the cascade's calibrated screen (scan/screen.Screen)

``model_id`` is a content hash of config + weights: the same network always gets the same id,
so scan outputs keyed by it are reproducible and a retrained model never collides. The screen
(``avrl calibrate``) is not part of the id: it decides which windows the network sees, not what
the network says about them; a scan's manifest records it. A screen names the model it was
calibrated for (its audio head reads that network's audio branch): one that names another is
refused when written and left out when read.

A model file is input, and its load costs at most a small multiple of its size: the archive
must keep every entry stored, not compressed (``_check_archive``: torch would inflate a
deflated entry, so 32 kB could become 32 MB); the config is bounded field by field
(``ModelConfig``) before a network is built on the meta device; every tensor must have the
network's name, shape and dtype and its own storage, exactly its size (``_check_tensors``)
before anything is hashed or assigned: a tensor that views one shared element as a large shape
would otherwise be materialised at full size by hashing or inference.
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
    screen: Any = None  # scan/screen.Screen; None when the file has none, or an older one


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
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes
    return f"avrl-{data.get('preset')}-{h.hexdigest()[:12]}"


def _own_storages(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor on the CPU with a storage of its own, exactly its size: what a model file
    must hold (``_check_tensors``). A view into a larger or shared storage is copied."""
    owned: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state.items():
        t = value.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if (
            t.storage_offset() != 0
            or storage.nbytes() != t.numel() * t.element_size()
            or (storage.nbytes() and storage.data_ptr() in seen)
        ):
            t = t.clone()
            storage = t.untyped_storage()
        seen.add(storage.data_ptr())
        owned[name] = t
    return owned


def model_to_bytes(
    model: torch.nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
    screen: dict[str, Any] | None = None,
) -> bytes:
    """Serialise ``model`` (any device; DDP-wrapped is fine) with its config into file bytes."""
    return _serialise(model, cfg, meta, screen)[0]


def with_screen(data: bytes, screen: dict[str, Any], source: str = "<model bytes>") -> bytes:
    """The model file ``data`` (checked) with ``screen`` (``Screen.to_dict()``) in it; the
    model id stays the same."""
    loaded = model_from_bytes(data, source=source)
    return model_to_bytes(loaded.model, loaded.cfg, loaded.meta, screen)


def _serialise(
    model: torch.nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None,
    screen: dict[str, Any] | None = None,
) -> tuple[bytes, str]:
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    inner = getattr(inner, "_orig_mod", inner)  # and torch.compile
    state = _own_storages(inner.state_dict())
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
    if screen is not None:
        checked = _checked_screen(json.loads(json.dumps(screen)), "<screen>")
        if checked.model_id != payload["model_id"]:
            raise WeightsError(
                f"the screen was calibrated for model {checked.model_id!r:.80}, not "
                f"{payload['model_id']}: run `avrl calibrate` on this model"
            )
        payload["screen"] = json.loads(json.dumps(screen))
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


def _check_archive(data: bytes | str | os.PathLike[str], source: str) -> None:
    """A torch.save file is a zip archive whose entries hold the pickled structure and each
    tensor's storage. Only stored (uncompressed) entries that add up to no more than the
    archive itself are accepted, so loading allocates at most the file's size."""
    import zipfile

    try:
        if isinstance(data, bytes | bytearray | memoryview):
            size = len(data)
            infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
        else:
            size = os.path.getsize(data)
            with zipfile.ZipFile(data) as zf:
                infos = zf.infolist()
    except OSError:
        return  # missing or unreadable: load_weights_only says which, in one line
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise WeightsError(
            f"{source}: refused, not a readable PyTorch weights file ({_first_line(exc)}; a "
            "model file is a torch.save zip archive)"
        ) from None
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise WeightsError(
            f"{source}: refused, archive entry {packed[0]!r:.80} is compressed (torch.save "
            "stores entries uncompressed; a compressed one can expand without bound)"
        )
    declared = sum(i.file_size for i in infos)
    if declared > size:
        raise WeightsError(
            f"{source}: refused, archive entries declare {declared} bytes in a {size}-byte file"
        )


def _check_tensors(state: Any, network: torch.nn.Module) -> None:
    """The file's tensors against the network built on the meta device, before any is used:
    the same names, shapes and dtypes, dense CPU tensors each with a storage of its own and
    exactly its size. Raises RuntimeError (the caller's 'inconsistent' line) otherwise."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict is a {type(state).__name__}, expected a dict of tensors")
    expected = network.state_dict()
    missing = [n for n in expected if n not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RuntimeError(f"no weights for {missing[0]}{more}")
    unexpected = [n for n in state if n not in expected]
    if unexpected:
        raise RuntimeError(f"weights for no layer of this network: {unexpected[0]!r:.80}")
    seen: set[int] = set()
    for name, want in expected.items():
        t = state[name]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type != "cpu":
            raise RuntimeError(f"{name} is not a dense CPU tensor")
        if t.shape != want.shape or t.dtype != want.dtype:
            raise RuntimeError(
                f"size mismatch for {name}: {tuple(t.shape)} {t.dtype} in the file, "
                f"{tuple(want.shape)} {want.dtype} in the network"
            )
        storage = t.untyped_storage()
        nbytes = t.numel() * t.element_size()
        if (
            t.storage_offset() != 0
            or not t.is_contiguous()
            or storage.nbytes() != nbytes
            or (nbytes and storage.data_ptr() in seen)
        ):
            raise RuntimeError(
                f"{name} shares or overruns its storage ({storage.nbytes()} bytes stored for "
                f"{nbytes}); every tensor must own exactly its data"
            )
        seen.add(storage.data_ptr())


def model_from_bytes(
    data: bytes | str | os.PathLike[str], source: str = "<model bytes>"
) -> LoadedModel:
    """Rebuild the network stored in model-file bytes (or a local file's path); the model is
    returned in eval mode.

    The file is checked before anything is built from it or hashed (the archive, the config's
    bounds, every tensor against the network; module docstring). The network is built on the
    meta device and takes the loaded tensors as its own (``load_state_dict(assign=True)``): no
    random initialisation to overwrite, and the peak memory is the file's tensors once instead
    of twice (plus ``data`` while the caller holds it).
    """
    from avrl_batch.model import build_model

    _check_archive(data, source)
    payload = load_weights_only(data, source)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(
            f"{source}: not an AVRL model file (make one with `avrl train` or "
            "`avrl import-weights`)"
        )
    if payload.get("version") != VERSION:
        raise WeightsError(
            f"{source}: model file version {payload.get('version')!r:.40} is not "
            f"supported (this avrl reads version {VERSION})"
        )
    try:
        if not isinstance(payload.get("config"), dict):
            raise TypeError("config is not a mapping")
        cfg = ModelConfig.from_dict(payload["config"])
        with torch.device("meta"):
            model = build_model(cfg)
        _check_tensors(payload.get("state_dict"), model)
        model.load_state_dict(payload["state_dict"], strict=True, assign=True)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:  # a buffer outside the state dict would stay without data
            raise RuntimeError(f"no weights for {left[0]}")
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
            f"{payload.get('model_id')!r:.80} (file altered or corrupt)"
        )
    screen = None
    if "screen" in payload and not _older_screen(payload["screen"]):
        screen = _checked_screen(payload["screen"], source)
        if screen.model_id != model_id:  # calibrated for another network: not this one's
            screen = None
    model.eval()
    meta = payload.get("meta")
    return LoadedModel(
        model=model, cfg=cfg, model_id=model_id, meta=dict(meta) if isinstance(meta, dict) else {},
        screen=screen,
    )


def _older_screen(d: Any) -> bool:
    """A screen an older version calibrated (a lower ``format``): the model still loads, without
    it, and ``--cascade`` asks for ``avrl calibrate`` (its fields are not this version's)."""
    from avrl_batch.scan.screen import SCREEN_FORMAT

    fmt = d.get("format") if isinstance(d, dict) else None
    return isinstance(fmt, int) and not isinstance(fmt, bool) and 0 < fmt < SCREEN_FORMAT


def _checked_screen(d: Any, source: str) -> Any:
    """The file's screen, every field checked (types, lengths, finite numbers, this
    version's features), or one WeightsError line."""
    from avrl_batch.scan.screen import Screen

    try:
        return Screen.from_dict(d)
    except (ValueError, TypeError, KeyError) as exc:
        raise WeightsError(
            f"{source}: the model file's screen is invalid ({_first_line(exc)}); run "
            "`avrl calibrate` again"
        ) from exc


def save_model(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
    screen: dict[str, Any] | None = None,
) -> str:
    """Write a model file atomically (temp + fsync + rename); returns its model id."""
    data, model_id = _serialise(model, cfg, meta, screen)
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
