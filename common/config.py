"""What the run configs of the trainers share: ``config.json`` round trips and checked copies.

A run config is a frozen dataclass that also derives from :class:`RunConfig`; its ``check``
raises ValueError on values that cannot work (the default accepts everything), and
``TUPLE_FIELDS`` names the fields that JSON turns into lists.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="RunConfig")


class RunConfig:
    """Mixin of the trainers' config dataclasses."""

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("betas",)

    def to_json(self) -> str:
        """The config as sorted, indented JSON (what ``config.json`` holds)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict (e.g. a ``config.json``), checked; unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        d = dict(d)
        for key in cls.TUPLE_FIELDS:
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        cfg = cls(**d)
        cfg.check()
        return cfg

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (checked)."""
        cfg = dataclasses.replace(self, **changes)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ValueError on values that cannot work (here: none)."""


__all__ = ["RunConfig"]
