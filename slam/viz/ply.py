"""Point clouds in PLY: a binary writer and a small reader (ASCII and binary) with numpy only.

The writer produces ``binary_little_endian`` with one ``vertex`` element of ``float x y z`` and
``uchar red green blue``, which open3d, MeshLab and CloudCompare read. The reader takes any PLY whose
``vertex`` element has ``x y z`` (and optionally ``red green blue``, ``r g b`` or ``diffuse_*`` colours);
elements after the vertices (faces) are ignored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from slam.errors import InputError

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_COLOUR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write ``xyz (N, 3)`` points with ``rgb (N, 3)`` uint8 colours (grey when None), atomically."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if rgb is None:
        rgb = np.full((len(xyz), 3), 200, np.uint8)
    rgb = np.asarray(rgb).reshape(-1, 3)
    if len(rgb) != len(xyz):
        raise ValueError(f"write_ply: {len(xyz)} points but {len(rgb)} colours")
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    rec = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by slam\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(rec.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parse_header(path: Path, fh) -> tuple[str, list[tuple[str, int, list[tuple[str, str | None, str]]]]]:
    """Format and elements ``[(name, count, [(prop, list_count_type or None, type)])]`` of a PLY header."""
    if fh.readline().strip() != b"ply":
        raise InputError(f"{path}: not a PLY file (first line is not 'ply')")
    fmt = None
    elements: list = []
    while True:
        raw = fh.readline()
        if not raw:
            raise InputError(f"{path}: PLY header has no 'end_header'")
        parts = raw.decode("ascii", errors="replace").split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "end_header":
            break
        if parts[0] == "format" and len(parts) >= 2:
            fmt = parts[1]
        elif parts[0] == "element" and len(parts) == 3:
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            if parts[1] == "list" and len(parts) == 5:
                elements[-1][2].append((parts[4], parts[2], parts[3]))
            elif len(parts) == 3:
                elements[-1][2].append((parts[2], None, parts[1]))
            else:
                raise InputError(f"{path}: malformed PLY property line {raw!r}")
        else:
            raise InputError(f"{path}: unexpected PLY header line {raw!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path}: unsupported PLY format {fmt!r}")
    for name, _count, props in elements:
        for prop, _lt, typ in props:
            if typ not in _TYPES:
                raise InputError(f"{path}: PLY element {name!r} property {prop!r} has unknown type {typ!r}")
    return fmt, elements


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Points ``(N, 3)`` float64 and colours ``(N, 3)`` uint8 (None when the file has none) of a PLY file.

    Raises InputError when the file is missing, malformed or has no ``vertex`` element with ``x y z``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: PLY file not found")
    with open(path, "rb") as fh:
        fmt, elements = _parse_header(path, fh)
        body = fh.read()
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise InputError(f"{path}: PLY file has no 'vertex' element")
    vi = names.index("vertex")
    _, count, props = elements[vi]
    if any(lt is not None for _, lt, _ in props):
        raise InputError(f"{path}: PLY 'vertex' element has list properties, which this reader does not support")
    if fmt == "ascii":
        lines = body.decode("ascii", errors="replace").splitlines()
        skip = 0
        for name, n, eprops in elements[:vi]:
            skip += n  # one line per entry of each element before the vertices
        rows = [ln.split() for ln in lines[skip:skip + count]]
        if len(rows) < count or any(len(r) < len(props) for r in rows):
            raise InputError(f"{path}: PLY file is truncated ({len(rows)} of {count} vertices readable)")
        try:
            table = np.array([r[:len(props)] for r in rows], dtype=np.float64).reshape(count, len(props))
        except ValueError as exc:
            raise InputError(f"{path}: non-numeric vertex value in PLY file") from exc
        columns = {p: table[:, i] for i, (p, _, _) in enumerate(props)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        offset = 0
        for name, n, eprops in elements[:vi]:
            if any(lt is not None for _, lt, _ in eprops):
                raise InputError(f"{path}: PLY element {name!r} before 'vertex' has list properties; not supported")
            offset += n * np.dtype([(p, order + _TYPES[t]) for p, _, t in eprops]).itemsize
        dtype = np.dtype([(p, order + _TYPES[t]) for p, _, t in props])
        if len(body) < offset + count * dtype.itemsize:
            raise InputError(f"{path}: PLY file is truncated ({len(body)} bytes of data, need {offset + count * dtype.itemsize})")
        rec = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        columns = {p: rec[p] for p, _, _ in props}
    if not all(k in columns for k in ("x", "y", "z")):
        raise InputError(f"{path}: PLY 'vertex' element has no x, y, z properties")
    xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float64)
    rgb = None
    for cnames in _COLOUR_NAMES:
        if all(c in columns for c in cnames):
            cols = np.stack([columns[c] for c in cnames], axis=1)
            typ = dict((p, t) for p, _, t in props)[cnames[0]]
            if _TYPES[typ].startswith("f"):
                cols = cols * 255.0 if cols.size and cols.max() <= 1.0 else cols
            rgb = np.clip(np.rint(cols), 0, 255).astype(np.uint8)
            break
    return xyz, rgb
