"""Benchmark results: summary over repeats, ``results.json`` / ``results.md``, validation and comparison.

``results.json`` (schema :data:`SCHEMA`)::

    {"schema": 1, "meta": {suite, command, date, machine, configs, repeat, ...},
     "runs": [row, ...],                    # one per (sequence, config, repeat), see slam.bench.jobs
     "summary": [{"suite", "sequence", "config", "runs", "ok", "status",
                  "metrics": {metric: {"median", "min", "max"}}, "stage_ms": {stage: median ms/frame}}],
     "regressions": [...]}                  # only with --compare

A regression (:func:`compare`) is a (sequence, config) whose median ATE RMSE grew by more than 20 %, whose
tracked share fell by more than 2 points, whose fps fell by more than 20 %, or that ran before and fails now.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slam.errors import InputError

SCHEMA = 1
# (key, column header, format, better: "lower" | "higher" | None)
METRICS: tuple[tuple[str, str, str, str | None], ...] = (
    ("ate_rmse", "ATE RMSE", "{:.4f}", "lower"),
    ("ate_pct", "ATE % path", "{:.2f}", "lower"),
    ("rpe_trans_rmse", "RPE trans", "{:.4f}", "lower"),
    ("rpe_rot_deg_rmse", "RPE rot deg", "{:.3f}", "lower"),
    ("tracked_pct", "tracked %", "{:.1f}", "higher"),
    ("maps", "maps", "{:.0f}", None),
    ("resets", "resets", "{:.0f}", None),
    ("keyframes", "KFs", "{:.0f}", None),
    ("map_points", "points", "{:.0f}", None),
    ("fps", "fps", "{:.1f}", "higher"),
    ("ms_per_frame", "ms/frame", "{:.1f}", "lower"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}", "lower"),
    ("gpu_peak_mb", "GPU MB", "{:.0f}", "lower"),
)
REQUIRED_ROW_KEYS = ("id", "suite", "sequence", "config", "repeat", "status")
STAGE_COLUMNS = ("extract", "flow", "match", "pose", "local_map", "relocalise", "mapping", "triangulate",
                 "fuse", "ba")


@dataclass(frozen=True)
class Thresholds:
    """When a change is a regression: relative ATE growth, tracked-% drop in points, relative fps drop."""

    ate_rel: float = 0.20
    tracked_pts: float = 2.0
    fps_rel: float = 0.20
    ate_abs: float = 0.0  # ignore ATE growth smaller than this (scene units), for near-zero errors


# ---------------------------------------------------------------------------------------------- summary
def _key(row: dict) -> tuple[str, str, str]:
    return (str(row.get("suite")), str(row.get("sequence")), str(row.get("config")))


def summarise(rows: list[dict]) -> list[dict]:
    """Median, min and max of every metric per (suite, sequence, config) over the successful repeats."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    out = []
    for (suite, seq, cfg), group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        metrics: dict[str, dict] = {}
        for key, *_ in METRICS:
            vals = [float(r[key]) for r in ok if isinstance(r.get(key), (int, float))]
            if vals:
                metrics[key] = {"median": round(statistics.median(vals), 6), "min": round(min(vals), 6),
                                "max": round(max(vals), 6)}
        stages: dict[str, list[float]] = {}
        for r in ok:
            for st, ms in (r.get("stage_ms") or {}).items():
                stages.setdefault(st, []).append(float(ms))
        errors = sorted({str(r.get("error")) for r in group if r.get("status") != "ok"})
        out.append({
            "suite": suite, "sequence": seq, "config": cfg, "runs": len(group), "ok": len(ok),
            "status": "ok" if len(ok) == len(group) else ("failed" if not ok else "partial"),
            "metrics": metrics,
            "stage_ms": {st: round(statistics.median(v), 3) for st, v in sorted(stages.items())},
            "errors": errors,
        })
    return out


# ---------------------------------------------------------------------------------------------- machine
def machine_info(device: str | None = None) -> dict:
    """CPU model, cores, memory, Python/platform and (with ``device`` cuda) the GPU, for the report."""
    info: dict = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version()}
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = model or platform.processor() or platform.machine()
    info["cpu_count"] = os.cpu_count()
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["cpus_usable"] = os.cpu_count()
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name()
                info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                info["cuda"] = torch.version.cuda
        except Exception:  # no torch / broken driver: the report says no GPU
            pass
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews fps
    except (AttributeError, OSError):
        pass
    info["commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_machine(m: dict) -> str:
    """One line: ``AMD EPYC, 2 of 2 CPUs, 16 GB; GPU NVIDIA H100 (80 GB)``."""
    text = f"{m.get('cpu', '?')}, {m.get('cpus_usable', '?')} of {m.get('cpu_count', '?')} CPUs"
    if m.get("memory_gb"):
        text += f", {m['memory_gb']:g} GB RAM"
    if m.get("gpu"):
        text += f"; GPU {m['gpu']}" + (f" ({m['gpu_memory_gb']:g} GB)" if m.get("gpu_memory_gb") else "")
    text += f"; Python {m.get('python', '?')}"
    if m.get("load_avg_1m") is not None:
        text += f"; load average {m['load_avg_1m']:g} at start"
    if m.get("commit"):
        text += f"; commit {m['commit']}"
    return text


# ---------------------------------------------------------------------------------------------- files
def build_results(meta: dict, rows: list[dict], regressions: list[dict] | None = None) -> dict:
    data = {"schema": SCHEMA, "meta": meta, "runs": rows, "summary": summarise(rows)}
    if regressions is not None:
        data["regressions"] = regressions
    return data


def write_results(out_dir: str | Path, data: dict) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (atomically); returns both paths."""
    from slam.evaluation.trajectory import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "results.md"
    write_text_atomic(js, json.dumps(data, indent=1, default=str) + "\n")
    write_text_atomic(md, format_markdown(data))
    return js, md


def load_results(path: str | Path) -> dict:
    """Read a results.json (or the results.json in a folder); InputError when missing or malformed."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{p}: cannot read results file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from exc
    problems = validate_results(data)
    if problems:
        raise InputError(f"{p}: not a slam bench results file: {problems[0]}")
    return data


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _cell(metric: dict | None, fmt: str, spread: bool) -> str:
    if not metric:
        return "-"
    text = _fmt(metric["median"], fmt)
    if spread and metric["max"] != metric["min"]:
        text += " ±" + _fmt((metric["max"] - metric["min"]) / 2, fmt)
    return text


def format_markdown(data: dict) -> str:
    """The markdown report: header (machine, command, date), a results table and a stage table per suite."""
    meta = data.get("meta", {})
    summary = data.get("summary", [])
    repeat = int(meta.get("repeat") or 1)
    lines = [f"# slam bench: {meta.get('suite', '?')}", ""]
    lines.append(f"- machine: {describe_machine(meta.get('machine', {}))}")
    lines.append(f"- command: `{meta.get('command', '?')}`")
    lines.append(f"- date: {meta.get('date', '?')}; workers: {meta.get('workers', '?')}; "
                 f"mode: {meta.get('mode', '?')}; device: {meta.get('device', '?')}")
    if repeat > 1:
        lines.append(f"- {repeat} runs per cell: median ± half the range")
    lines.append("- ATE after Sim3 alignment (ground-truth units; % of the ground-truth path length); RPE over "
                 "consecutive frames; tracked % of frames; ms/frame is wall time over frames")
    lines.append("")
    show = [m for m in METRICS if any(m[0] in s["metrics"] for s in summary)]
    suites = list(dict.fromkeys(s["suite"] for s in summary))
    for suite in suites:
        rows = [s for s in summary if s["suite"] == suite]
        if len(suites) > 1:
            lines += [f"## {suite}", ""]
        header = ["sequence", "config"] + [m[1] for m in show] + ["status"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for s in rows:
            cells = [s["sequence"], s["config"]] + [_cell(s["metrics"].get(m[0]), m[2], repeat > 1) for m in show]
            status = s["status"] if s["status"] != "partial" else f"{s['ok']}/{s['runs']} ok"
            cells.append(status)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        stages = [st for st in STAGE_COLUMNS if any(st in s["stage_ms"] for s in rows)]
        if stages:
            lines += ["Per-stage milliseconds per frame (median; mapping includes triangulate, fuse, ba):", ""]
            header = ["sequence", "config", "frame"] + stages
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            for s in rows:
                st = s["stage_ms"]
                cells = [s["sequence"], s["config"], _fmt(st.get("frame"), "{:.1f}")]
                cells += [_fmt(st.get(x), "{:.1f}") for x in stages]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    failed = [s for s in summary if s["errors"]]
    if failed:
        lines += ["Failed runs:", ""]
        for s in failed:
            for e in s["errors"]:
                lines.append(f"- {s['sequence']} / {s['config']}: {e}")
        lines.append("")
    if "regressions" in data:
        regs = data["regressions"]
        lines += [f"## Comparison with {meta.get('compare', 'the earlier results')}", ""]
        if not regs:
            lines.append("No regression.")
        else:
            lines.append("| sequence | config | metric | before | now | change |")
            lines.append("|---|---|---|---|---|---|")
            for r in regs:
                lines.append(f"| {r['sequence']} | {r['config']} | {r['metric']} | {_fmt(r['old'], '{:.4g}')} "
                             f"| {_fmt(r['new'], '{:.4g}')} | {r['message']} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- checks
def validate_results(data) -> list[str]:
    """Problems that make ``data`` not a well-formed results file (empty list when it is well formed).

    Checks the schema, the meta block, that every run row has its identifying keys and a known status,
    that finite numbers are where numbers belong, that a successful row has frames and fps, and that the
    summary covers exactly the (sequence, config) pairs of the runs.
    """
    from slam.bench.jobs import STATUSES

    problems: list[str] = []
    if not isinstance(data, dict):
        return ["top level is not a JSON object"]
    if data.get("schema") != SCHEMA:
        problems.append(f"schema is {data.get('schema')!r}, expected {SCHEMA}")
    meta = data.get("meta")
    if not isinstance(meta, dict) or not {"suite", "command", "date", "machine"} <= set(meta):
        problems.append("meta must hold suite, command, date and machine")
    runs = data.get("runs")
    if not isinstance(runs, list):
        return problems + ["runs is not a list"]
    numeric = [m[0] for m in METRICS] + ["wall_s", "rpe_trans_rmse", "run_peak_rss_mb"]
    for i, row in enumerate(runs):
        if not isinstance(row, dict):
            problems.append(f"runs[{i}] is not an object")
            continue
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            problems.append(f"runs[{i}] lacks {', '.join(missing)}")
            continue
        if row["status"] not in STATUSES:
            problems.append(f"runs[{i}] ({row['id']}): unknown status {row['status']!r}")
        for k in numeric:
            v = row.get(k)
            if v is not None and not (isinstance(v, (int, float)) and v == v and abs(v) != float("inf")):
                problems.append(f"runs[{i}] ({row['id']}): {k} is not a finite number: {v!r}")
        if row["status"] == "ok":
            if not isinstance(row.get("frames"), int) or row["frames"] <= 0:
                problems.append(f"runs[{i}] ({row['id']}): ok but no frames")
            if not isinstance(row.get("fps"), (int, float)) or row["fps"] <= 0:
                problems.append(f"runs[{i}] ({row['id']}): ok but fps is {row.get('fps')!r}")
            tp = row.get("tracked_pct")
            if not isinstance(tp, (int, float)) or not 0 <= tp <= 100:
                problems.append(f"runs[{i}] ({row['id']}): tracked_pct {tp!r} outside [0, 100]")
        elif not row.get("error"):
            problems.append(f"runs[{i}] ({row['id']}): status {row['status']} without an error message")
    summary = data.get("summary")
    if not isinstance(summary, list):
        problems.append("summary is not a list")
    else:
        have = {_key(s) for s in summary if isinstance(s, dict)}
        want = {_key(r) for r in runs if isinstance(r, dict)}
        if have != want:
            problems.append(f"summary covers {len(have)} (sequence, config) pairs, runs have {len(want)}")
    return problems


def compare(old: dict, new: dict, thresholds: Thresholds = Thresholds()) -> list[dict]:
    """Regressions of ``new`` against ``old`` (results dicts), matched on (sequence, config).

    Each regression: ``{"sequence", "config", "metric", "old", "new", "message"}``. Pairs present in only
    one of the two files are not regressions.
    """
    before = {(s["sequence"], s["config"]): s for s in old.get("summary", [])}
    out = []
    for s in new.get("summary", []):
        o = before.get((s["sequence"], s["config"]))
        if o is None:
            continue

        def med(summary: dict, key: str):
            m = summary["metrics"].get(key)
            return None if m is None else m["median"]

        def add(metric: str, a, b, message: str) -> None:
            out.append({"sequence": s["sequence"], "config": s["config"], "metric": metric, "old": a, "new": b,
                        "message": message})

        if o["ok"] > 0 and s["ok"] < s["runs"]:
            add("status", o["ok"], s["ok"], f"{s['runs'] - s['ok']} of {s['runs']} runs failed (ran before)")
        a, b = med(o, "ate_rmse"), med(s, "ate_rmse")
        if a is not None and b is not None and b > a * (1 + thresholds.ate_rel) and b - a > thresholds.ate_abs:
            add("ate_rmse", a, b, f"ATE +{100 * (b - a) / a:.0f}%" if a > 0 else "ATE grew from 0")
        elif a is not None and b is None and s["ok"] > 0:
            add("ate_rmse", a, b, "no ATE any more (too few poses tracked)")
        a, b = med(o, "tracked_pct"), med(s, "tracked_pct")
        if a is not None and b is not None and a - b > thresholds.tracked_pts:
            add("tracked_pct", a, b, f"tracked -{a - b:.1f} points")
        a, b = med(o, "fps"), med(s, "fps")
        if a is not None and b is not None and b < a * (1 - thresholds.fps_rel):
            add("fps", a, b, f"fps -{100 * (a - b) / a:.0f}%")
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def thresholds_dict(t: Thresholds) -> dict:
    return asdict(t)
