"""The grid file and each point's config.

This module owns :func:`load_grid` (the base config every point shares, the points in the
paper's ``RsCxWd`` notation, the ``train`` launch and ``summary`` measurement settings, every
key checked) and a point's config: the base deltas, then ``model.overrides`` radix /
cardinality / bottleneck_width from its name, then the point's own deltas, read through
:func:`~resnest_gluon.config.load_config` as its trainer reads them.
"""
import copy
import dataclasses
import difflib
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .. import config as cfg
from ..errors import UserError

__all__ = ["GridError", "Point", "LaunchSettings", "SpeedSettings", "Grid", "load_grid",
           "point_tree", "point_config", "base_config"]

_VARIANT = re.compile(r"^(\d+)s(\d+)x(\d+)d")
_WIDTH = re.compile(r"^(\d+)x(\d+)d$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class GridError(UserError, ValueError):
    """A mistake in the grid file or the point selection, naming the key or point."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of the grid.

    ``deltas`` are its config deltas over the grid's base (``model.overrides`` with radix,
    cardinality and bottleneck_width for an ``RsCxWd`` name, then the point's own ``config``).
    """

    name: str
    deltas: Dict[str, Any]
    radix: Optional[int] = None
    cardinality: Optional[int] = None
    width: Optional[int] = None


@dataclasses.dataclass
class LaunchSettings:
    """How ``train`` launches each point's trainer (the grid's ``train`` section)."""

    launcher: str = "local"            # local | horovodrun
    np: int = 1                        # horovodrun -np
    hosts: Optional[str] = None        # horovodrun -H (default localhost:NP)
    hostfile: Optional[str] = None     # horovodrun -hostfile (instead of hosts)
    horovodrun: str = "horovodrun"     # the launcher executable
    python: Optional[str] = None       # the interpreter on every node (default: this one)
    extra_args: List[str] = dataclasses.field(default_factory=list)  # more horovodrun args


@dataclasses.dataclass
class SpeedSettings:
    """Input size of the GFLOPs and of the speed measurement (the grid's ``summary`` section)."""

    size: int = 224
    batch: int = 16
    repeats: int = 3
    speed: bool = True                 # measure img/s (false: params and GFLOPs only)


@dataclasses.dataclass
class Grid:
    """A parsed grid file."""

    path: str
    base: Dict[str, Any]
    points: List[Point]
    train: LaunchSettings
    summary: SpeedSettings

    def select(self, names: Optional[Sequence[str]]) -> List[Point]:
        """The points named (all when ``names`` is empty), in grid order."""
        if not names:
            return list(self.points)
        known = {p.name for p in self.points}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise GridError(f"point(s) {unknown} are not in {self.path}; its points: "
                            f"{', '.join(p.name for p in self.points)}")
        return [p for p in self.points if p.name in names]


def _check_keys(mapping, allowed, where):
    if not isinstance(mapping, dict):
        raise GridError(f"{where} must be a mapping, got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GridError(f"unknown key {key!r} in {where}{hint} (valid: "
                            f"{', '.join(allowed)})")


def _merge(base: Dict[str, Any], delta: Dict[str, Any]) -> Dict[str, Any]:
    """``delta`` laid over ``base``, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _variant_deltas(radix, cardinality, width):
    return {"model": {"overrides": {"radix": radix, "cardinality": cardinality,
                                    "bottleneck_width": width}}}


def _make_point(name, extra, where) -> Point:
    name = str(name)
    if not _SAFE_NAME.match(name):
        raise GridError(f"{where}: point name {name!r} must be letters, digits and _.+- "
                        f"(it names the point's work directory)")
    match = _VARIANT.match(name)
    if match is None and not extra:
        raise GridError(f"{where}: point {name!r} is not in the RsCxWd notation (e.g. 2s1x64d: "
                        f"radix 2, cardinality 1, width 64) and has no config of its own")
    numbers = tuple(int(g) for g in match.groups()) if match else (None, None, None)
    deltas = _variant_deltas(*numbers) if match else {}
    return Point(name, _merge(deltas, extra or {}), *numbers)


def _grid_points(section, where) -> List[Point]:
    _check_keys(section, ("radix", "widths"), where)
    radices, widths = section.get("radix", []), section.get("widths", [])
    if not isinstance(radices, list) or not isinstance(widths, list):
        raise GridError(f"{where}: radix and widths must be lists")
    points = []
    for width in widths:               # the paper's order: each width, every radix
        match = _WIDTH.match(str(width))
        if match is None:
            raise GridError(f"{where}.widths: {width!r} is not CxWd (e.g. 2x40d)")
        for radix in radices:
            if isinstance(radix, bool) or not isinstance(radix, int) or radix < 0:
                raise GridError(f"{where}.radix: {radix!r} is not a whole number >= 0")
            points.append(_make_point(f"{radix}s{width}", None, where))
    return points


def _listed_points(entries, where) -> List[Point]:
    if not isinstance(entries, list):
        raise GridError(f"{where} must be a list of RsCxWd names or {{name, config}} mappings")
    points = []
    for n, entry in enumerate(entries):
        if isinstance(entry, dict):
            _check_keys(entry, ("name", "config"), f"{where}[{n}]")
            if "name" not in entry:
                raise GridError(f"{where}[{n}] has no name")
            extra = entry.get("config") or {}
            if not isinstance(extra, dict):
                raise GridError(f"{where}[{n}].config must be a mapping of config sections")
            points.append(_make_point(entry["name"], extra, f"{where}[{n}]"))
        else:
            points.append(_make_point(entry, None, f"{where}[{n}]"))
    return points


def _settings(cls, section, where):
    section = section or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(section, list(fields), where)
    settings = cls(**section)
    for name, value in section.items():
        default = fields[name].default
        expected = type(default) if default not in (None, dataclasses.MISSING) else None
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise GridError(f"{where}.{name} must be a whole number, got {value!r}")
        if expected is bool and not isinstance(value, bool):
            raise GridError(f"{where}.{name} must be true or false, got {value!r}")
    return settings


def load_grid(path: str) -> Grid:
    """Read and check a grid file.

    Parameters
    ----------
    path : str
        YAML with ``base`` (config deltas every point shares, the schema of ``configs/*.yaml``),
        ``grid`` (``radix`` list x ``widths`` list such as ``2x40d``: every combination),
        ``points`` (more points: ``RsCxWd`` names, or ``{name, config}`` with the point's own
        config deltas), ``train`` (:class:`LaunchSettings`) and ``summary``
        (:class:`SpeedSettings`).

    Returns
    -------
    Grid
    """
    tree = cfg.read_yaml(path, what="grid", error=GridError)
    _check_keys(tree, ("base", "grid", "points", "train", "summary"), path)
    base = tree.get("base") or {}
    _check_keys(base, [f.name for f in dataclasses.fields(cfg.Config)], f"{path}: base")
    points, seen = [], {}
    for point in (_grid_points(tree.get("grid") or {}, f"{path}: grid")
                  + _listed_points(tree.get("points") or [], f"{path}: points")):
        if point.name in seen:
            if seen[point.name] != point:
                raise GridError(f"{path}: point {point.name!r} is listed twice, differently")
            continue
        seen[point.name] = point
        points.append(point)
    if not points:
        raise GridError(f"{path} lists no points (give grid: {{radix, widths}} or points)")
    launch = _settings(LaunchSettings, tree.get("train"), f"{path}: train")
    if launch.launcher not in ("local", "horovodrun"):
        raise GridError(f"{path}: train.launcher must be local or horovodrun, got "
                        f"{launch.launcher!r}")
    if launch.np < 1:
        raise GridError(f"{path}: train.np must be >= 1")
    speed = _settings(SpeedSettings, tree.get("summary"), f"{path}: summary")
    if speed.size < 32 or speed.batch < 1 or speed.repeats < 1:
        raise GridError(f"{path}: summary needs size >= 32, batch >= 1, repeats >= 1")
    return Grid(path, base, points, launch, speed)


def point_tree(grid: Grid, point: Point) -> Dict[str, Any]:
    """The point's config deltas over the defaults: the base with the point's laid over it."""
    return _merge(grid.base, point.deltas)


def _config_from_tree(tree: Dict[str, Any], overrides: Sequence[str], label: str):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "point.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(tree, handle, sort_keys=False)
        try:
            return cfg.load_config(path, overrides)
        except cfg.ConfigError as err:
            raise cfg.ConfigError(str(err).replace(path, label)) from None


def point_config(grid: Grid, point: Point, overrides: Sequence[str] = ()) -> cfg.Config:
    """The point's resolved :class:`~resnest_gluon.config.Config` (``overrides`` last), read
    through :func:`~resnest_gluon.config.load_config` exactly as its trainer will read it."""
    return _config_from_tree(point_tree(grid, point), overrides, f"point {point.name}")


def base_config(grid: Grid, overrides: Sequence[str] = ()) -> cfg.Config:
    """The base config with ``overrides`` (a mistake here concerns every point)."""
    return _config_from_tree(grid.base, overrides, f"{grid.path}: base")
