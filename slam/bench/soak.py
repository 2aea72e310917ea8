"""Soak run: one long, small synthetic sequence with memory and map size sampled over time.

It shows whether the process and the map stay bounded: the map through ``mapping.max_keyframes`` (oldest
keyframes culled) and the process through the absence of leaks. Output: ``soak.json`` (samples and the
analysis) and ``soak.png`` (RSS, keyframes and map points against the frame index).

Verdict (:func:`analyse_soak`): RSS is *bounded* when its least-squares slope over the second half of the
run is below ``rss_slope_limit`` MB per 1000 frames; the map is *bounded* when no sample has more
keyframes in the current map than the configured limit (plus the one being inserted). Maps left behind
after tracking loss stay in the atlas, so the total over all maps can grow with every reset: the plot shows
both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from slam.bench.jobs import Job, execute_isolated
from slam.bench.suites import DEFAULT_CACHE_DIR, SynthSpec

log = logging.getLogger(__name__)

RSS_SLOPE_LIMIT_MB_PER_1000 = 5.0


def soak_job(out_dir: str | Path, spec: SynthSpec, sequence_path: str | Path, config: str | None,
             overrides: list[str], sample_every: int, timeout_s: float | None = None,
             threads: int | None = None) -> Job:
    """The :class:`Job` of a soak run (memory and map size recorded every ``sample_every`` frames)."""
    out = Path(out_dir).resolve()
    return Job(id=f"soak/{spec.key}", suite="soak", sequence=spec.key, path=str(sequence_path), variant="soak",
               out_dir=str(out / "run"), config=config, overrides=list(overrides), timeout_s=timeout_s,
               threads=threads, sample_every=max(int(sample_every), 1))


def analyse_soak(samples: list[dict], max_keyframes: int | None,
                 rss_slope_limit: float = RSS_SLOPE_LIMIT_MB_PER_1000) -> dict:
    """Growth figures of a soak run's samples (``frame``, ``rss_mb``, ``keyframes``, ``map_points``, ``maps``).

    Returns RSS at start/end/peak, the RSS slope over the second half (MB per 1000 frames), the peak
    keyframes and map points (all maps; and keyframes of the current map), and the verdicts ``rss_bounded``
    and ``map_bounded`` (the current map never above ``max_keyframes`` + 1; None when unknown).
    """
    if len(samples) < 2:
        return {"samples": len(samples), "rss_bounded": None, "map_bounded": None}
    frames = np.array([s["frame"] for s in samples], float)
    rss = np.array([s["rss_mb"] for s in samples], float)
    kfs = np.array([s["keyframes"] for s in samples], float)
    pts = np.array([s["map_points"] for s in samples], float)
    maps = np.array([s.get("maps", 1) for s in samples], float)
    # keyframes of the current map (older samples without it: the mean over maps)
    map_kfs = np.array([s["map_keyframes"] if "map_keyframes" in s else s["keyframes"] / max(s.get("maps", 1), 1)
                        for s in samples], float)
    half = frames >= frames[-1] / 2
    if half.sum() >= 2 and np.ptp(frames[half]) > 0:
        slope = float(np.polyfit(frames[half], rss[half], 1)[0]) * 1000.0
        kf_slope = float(np.polyfit(frames[half], kfs[half], 1)[0]) * 1000.0
        pt_slope = float(np.polyfit(frames[half], pts[half], 1)[0]) * 1000.0
    else:
        slope = kf_slope = pt_slope = float("nan")
    out = {
        "samples": len(samples), "frames": int(frames[-1]),
        "rss_start_mb": round(float(rss[0]), 1), "rss_end_mb": round(float(rss[-1]), 1),
        "rss_peak_mb": round(float(rss.max()), 1),
        "rss_slope_mb_per_1000_frames": round(slope, 3),
        "keyframes_peak": int(kfs.max()), "keyframes_end": int(kfs[-1]),
        "keyframes_slope_per_1000_frames": round(kf_slope, 2),
        "map_points_peak": int(pts.max()), "map_points_end": int(pts[-1]),
        "map_points_slope_per_1000_frames": round(pt_slope, 1),
        "map_keyframes_peak": int(map_kfs.max()), "maps_end": int(maps[-1]), "max_keyframes": max_keyframes,
        "rss_slope_limit_mb_per_1000_frames": rss_slope_limit,
    }
    out["rss_bounded"] = bool(np.isfinite(slope) and slope < rss_slope_limit)
    if max_keyframes is None:
        out["map_bounded"] = None
    else:
        out["map_bounded"] = bool(np.all(map_kfs <= max_keyframes + 1))
    return out


def plot_soak(samples: list[dict], path: str | Path, title: str = "soak") -> Path:
    """RSS (MB) and keyframes / map points against the frame index, to a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    frames = [s["frame"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    try:
        ax1.plot(frames, [s["rss_mb"] for s in samples], color="tab:red")
        ax1.set_ylabel("RSS (MB)")
        ax1.set_title(title)
        ax1.grid(alpha=0.3)
        ax2.plot(frames, [s["keyframes"] for s in samples], color="tab:blue", label="keyframes, all maps")
        if all("map_keyframes" in s for s in samples):
            ax2.plot(frames, [s["map_keyframes"] for s in samples], color="tab:blue", linestyle="--",
                     label="keyframes, current map")
        ax2.legend(loc="upper left", fontsize=8)
        ax2.set_ylabel("keyframes", color="tab:blue")
        ax2.set_xlabel("frame")
        ax2.grid(alpha=0.3)
        ax3 = ax2.twinx()
        ax3.plot(frames, [s["map_points"] for s in samples], color="tab:green", label="map points")
        ax3.set_ylabel("map points", color="tab:green")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def format_soak(result: dict) -> str:
    """Markdown lines summarising a soak result (for results.md, the README and the terminal)."""
    a = result.get("analysis", {})
    row = result.get("row", {})
    head = []
    if row.get("status") != "ok":
        head = [f"- the run {row.get('status')} after {a.get('frames', 0)} frames: {row.get('error')}"]
        if not a.get("frames"):
            return head[0]
    verdict = lambda v: "unknown" if v is None else ("bounded" if v else "GROWING")  # noqa: E731
    lines = [
        f"- sequence: {result.get('sequence')} ({a.get('frames')} frames), config `{result.get('config')}` "
        f"+ {', '.join(result.get('overrides', [])) or 'no overrides'}",
        f"- speed: {row.get('fps') or 0:.1f} fps; tracked {row.get('tracked_pct') or 0:.1f}%; maps {row.get('maps')}; "
        f"resets {row.get('resets')}",
        f"- RSS: {a.get('rss_start_mb')} MB at start, {a.get('rss_end_mb')} MB at the end, peak "
        f"{a.get('rss_peak_mb')} MB; slope over the second half {a.get('rss_slope_mb_per_1000_frames')} MB per "
        f"1000 frames -> {verdict(a.get('rss_bounded'))}",
        f"- map: keyframes in the current map at most {a.get('map_keyframes_peak')} (limit "
        f"{a.get('max_keyframes')}); all {a.get('maps_end')} maps: keyframes peak {a.get('keyframes_peak')}, end "
        f"{a.get('keyframes_end')}; map points peak {a.get('map_points_peak')}, end {a.get('map_points_end')} "
        f"({a.get('map_points_slope_per_1000_frames')} per 1000 frames over the second half) -> "
        f"{verdict(a.get('map_bounded'))}",
    ]
    return "\n".join(head + lines)


def run_soak(
    out_dir: str | Path,
    frames: int = 5000,
    size: tuple[int, int] = (160, 120),
    preset: str = "tube",
    seed: int = 0,
    config: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    max_keyframes: int | None = 50,
    sample_every: int = 50,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    timeout_s: float | None = None,
    threads: int | None = None,
) -> dict:
    """Render (once, cached) and run the soak sequence in a worker process; write soak.json and soak.png.

    Returns ``{"sequence", "config", "overrides", "row", "analysis", "samples"}`` (also in soak.json).
    """
    from slam.evaluation.trajectory import write_text_atomic
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SynthSpec(preset, int(frames), int(seed), int(size[0]), int(size[1]))
    seq_path = spec.materialise(cache_dir)
    ovr = list(overrides)
    if max_keyframes is not None:
        ovr.append(f"mapping.max_keyframes={int(max_keyframes)}")
    job = soak_job(out, spec, seq_path.resolve(), config, ovr, sample_every, timeout_s, threads)
    row = execute_isolated(job)
    samples = row.pop("samples", [])
    analysis = analyse_soak(samples, max_keyframes)
    result = {"sequence": spec.key, "config": config or "default", "overrides": ovr, "row": row,
              "analysis": analysis, "samples": samples}
    write_text_atomic(out / "soak.json", json.dumps(result, indent=1, default=str) + "\n")
    if len(samples) >= 2:
        plot_soak(samples, out / "soak.png", title=f"soak: {spec.key}, max_keyframes={max_keyframes}")
    return result
