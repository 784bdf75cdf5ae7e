"""The classes a model tells apart, and which of them are normal (no anomaly).

A ``ClassSet`` comes from the training data (``avrl prepare --classes/--normal``), is stored in
the model file (``ModelConfig.class_names`` and ``normal_classes``) and in each scan manifest,
and is what the timeline, query, report and evaluation read. ``SHADE`` is the SHADE data set's
nine classes: the default of the model presets and the labels of the synthetic generator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from avrl_batch.errors import ConfigError

# a label is a column value, an HTML attribute and a CLI argument: keep it plain
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ClassSet:
    """Class names in the order of the model's outputs and the names of the normal ones."""

    names: tuple[str, ...]
    normal: frozenset[str]

    def __post_init__(self) -> None:
        bad = [n for n in self.names if not _LABEL_RE.match(n)]
        if bad:
            raise ConfigError(
                f"label {bad[0]!r} is not a plain name: use letters, digits, '_', '-' or '.'"
            )
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice:
            raise ConfigError(f"label {twice[0]!r} is listed twice in the classes")
        unknown = sorted(self.normal - set(self.names))
        if unknown:
            raise ConfigError(
                f"normal label {unknown[0]!r} is not one of the classes "
                f"({', '.join(self.names)})"
            )
        if not self.normal:
            raise ConfigError(
                f"no normal class among {', '.join(self.names)}: name the labels of calm "
                "footage with --normal LABEL"
            )
        if len(self.normal) == len(self.names):
            raise ConfigError(
                f"every class ({', '.join(self.names)}) is normal: at least one must be an "
                "anomaly"
            )

    @classmethod
    def of(cls, names: Iterable[str], normal: Iterable[str] | None = None) -> ClassSet:
        """``names`` with ``normal`` (None: SHADE's normals when the names are SHADE's,
        otherwise a ConfigError asking for --normal)."""
        names = tuple(names)
        if normal is None:
            if names != SHADE.names:
                raise ConfigError(
                    f"which of {', '.join(names)} are normal (calm footage)? "
                    "name them with --normal LABEL"
                )
            return SHADE
        return cls(names, frozenset(normal))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClassSet:
        """The classes a model config or scan manifest records (``class_names`` and
        ``normal_classes``; a record without ``normal_classes`` has SHADE's)."""
        names = tuple(record.get("class_names") or SHADE.names)
        normal = record.get("normal_classes")
        return cls.of(names, None if normal is None else tuple(normal))

    @property
    def anomaly(self) -> tuple[str, ...]:
        """The anomaly classes, in output order."""
        return tuple(n for n in self.names if n not in self.normal)

    @property
    def anomaly_index(self) -> list[int]:
        """Output positions of the anomaly classes."""
        return [i for i, n in enumerate(self.names) if n not in self.normal]

    def index_of(self, label: str) -> int:
        """The output position of ``label``; ConfigError naming the known labels otherwise."""
        try:
            return self.names.index(label)
        except ValueError:
            raise ConfigError(
                f"unknown label {label!r}; known labels: {', '.join(self.names)}"
            ) from None

    def is_anomaly(self, label: str) -> bool:
        return label not in self.normal

    def __len__(self) -> int:
        return len(self.names)


# SHADE's nine classes, in the order of the paper model's outputs; the last two are normal.
SHADE = ClassSet(
    names=(
        "arrest", "chase", "fight", "knockdown", "run", "shoot", "scatter", "normal1", "normal2"
    ),
    normal=frozenset({"normal1", "normal2"}),
)
