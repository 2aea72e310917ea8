"""Where the milliseconds of a frame go: a flame-style text breakdown of ``stats.json``'s stage timings.

``stats["stage_ms"]`` holds the mean duration of each named stage per call and ``stats["stage_calls"]`` the
number of calls (see :class:`slam.timing.StageTimer`). Stage names are flat; their nesting is the pipeline's
(``frame`` > ``extract``, ``match``, ``pose``, ``local_map`` ...; ``mapping`` > ``triangulate``, ``fuse``,
``ba``), given by :data:`STAGE_TREE`. A name written as a path (``frame/extract`` or ``frame.extract``)
nests by its own path instead. Costs are shown per processed frame: ``mean * calls / frames``, so a stage
that runs on one frame in ten weighs a tenth of its mean.

With ``sync`` the local mapper runs inside the tracking call, so ``mapping`` is a child of ``frame``; with
the mapper thread it is a root of its own (its milliseconds overlap the frame's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# parent -> children, in pipeline order; a stage not named anywhere is shown as a root
STAGE_TREE: dict[str, tuple[str, ...]] = {
    "frame": ("extract", "flow", "describe", "init", "match", "rotation", "pose", "local_map", "relocalise"),
    "mapping": ("triangulate", "fuse", "ba"),
}


@dataclass
class StageNode:
    """One stage of the breakdown: ``ms`` per processed frame, ``calls`` in the run."""

    name: str
    ms: float = 0.0
    calls: int = 0
    children: list["StageNode"] = field(default_factory=list)


def per_frame_ms(stats: dict) -> dict[str, tuple[float, int]]:
    """``{stage: (ms per processed frame, calls)}`` from a stats dict (``stage_ms``, ``stage_calls``, ``frames``).

    Without ``stage_calls`` (older stats files) every stage is taken to run once per frame.
    """
    frames = max(int(stats.get("frames") or 0), 1)
    means = stats.get("stage_ms") or {}
    calls = stats.get("stage_calls") or {}
    out: dict[str, tuple[float, int]] = {}
    for name, mean in means.items():
        if mean is None:
            continue
        n = int(calls.get(name, frames))
        out[name] = (float(mean) * n / frames, n)
    return out


def build_tree(stats: dict, tree: dict[str, tuple[str, ...]] | None = None) -> list[StageNode]:
    """Root stages with their children, each child list sorted by cost (largest first)."""
    tree = dict(STAGE_TREE if tree is None else tree)
    costs = per_frame_ms(stats)
    if stats.get("sync") and "mapping" in tree:
        tree["frame"] = tuple(tree.get("frame", ())) + ("mapping",)
    parent_of: dict[str, str] = {}
    for parent, children in tree.items():
        for child in children:
            parent_of.setdefault(child, parent)
    nodes: dict[str, StageNode] = {}

    def node(path: str) -> StageNode:
        if path not in nodes:
            nodes[path] = StageNode(path.replace(".", "/").rsplit("/", 1)[-1])
        return nodes[path]

    roots: list[StageNode] = []
    for name, (ms, calls) in costs.items():
        n = node(name)
        n.ms, n.calls = ms, calls
    for name in list(costs):
        path = name.replace(".", "/")
        if "/" in path:
            parent = name[: len(path.rsplit("/", 1)[0])]
        else:
            parent = parent_of.get(name)
            # walk up past parents that were never timed (their children then hang on the nearest timed one)
            while parent is not None and parent not in costs:
                parent = parent_of.get(parent)
        if parent is None or parent == name:
            roots.append(nodes[name])
        else:
            node(parent).children.append(nodes[name])
    for path, n in nodes.items():
        if path not in costs and n not in roots:
            n.ms = sum(c.ms for c in n.children)
            roots.append(n)
    for n in nodes.values():
        n.children.sort(key=lambda c: -c.ms)
    roots.sort(key=lambda r: -r.ms)
    return roots


def format_profile(stats: dict, width: int = 40, tree: dict[str, tuple[str, ...]] | None = None) -> str:
    """An indented bar chart of the per-frame milliseconds of every stage.

    Each line: stage name (indented by depth), ms per frame, share of the frame, a bar scaled to the
    largest root. ``(other)`` is a parent's time not spent in any timed child. Returns a multi-line string
    ending without a newline; an empty-stages stats dict gives a one-line note.
    """
    roots = build_tree(stats, tree)
    if not roots:
        return "no stage timings in stats (stage_ms is empty)"
    frame = next((r for r in roots if r.name == "frame"), None)
    ref = frame.ms if frame is not None and frame.ms > 0 else max(r.ms for r in roots) or 1.0
    scale = max(r.ms for r in roots) or 1.0
    frames = int(stats.get("frames") or 0)
    fps = stats.get("fps")
    mode = "sync" if stats.get("sync") else "mapper thread"
    head = f"per-frame profile: {frames} frames"
    if fps:
        head += f", {float(fps):.1f} fps"
    head += f", {ref:.1f} ms per frame ({mode}; shares are of the frame)"
    lines = [head]
    label_w = 28

    def emit(n: StageNode, depth: int) -> None:
        label = ("  " * depth + n.name)[:label_w]
        bar = "#" * max(int(round(width * n.ms / scale)), 1 if n.ms > 0 else 0)
        calls = f"{n.calls} calls" if n.calls else ""
        lines.append(f"{label:<{label_w}} {n.ms:9.2f} ms {100 * n.ms / ref:6.1f}%  {bar:<{width}} {calls}".rstrip())
        for c in n.children:
            emit(c, depth + 1)
        if n.children:
            rest = n.ms - sum(c.ms for c in n.children)
            if rest > 0.005 * max(ref, 1e-9):
                label = ("  " * (depth + 1) + "(other)")[:label_w]
                bar = "." * int(round(width * rest / scale))
                lines.append(f"{label:<{label_w}} {rest:9.2f} ms {100 * rest / ref:6.1f}%  {bar}".rstrip())

    for r in roots:
        emit(r, 0)
    return "\n".join(lines)
