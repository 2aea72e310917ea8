"""The ``slam bench`` subcommand: run configurations over a suite and write results.json / results.md.

Exit status: 0 done; 1 the outputs written are not well formed (a bug); 3 a regression against
``--compare`` with ``--fail-on-regression``; 4 some run failed, with ``--strict``; 2 (from the CLI) a
user error such as an unknown suite or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

from slam.errors import InputError

log = logging.getLogger(__name__)

EXIT_MALFORMED = 1
EXIT_REGRESSION = 3
EXIT_FAILED_RUNS = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="quick | synthetic | real | soak | PATH (a sequence, or a folder of sequences)")
    p.add_argument("--configs", default=None,
                   help="comma-separated configurations: sift, orb, superpoint, optionally +flow/+hybrid "
                        "(e.g. sift,orb,sift+hybrid); default sift,orb")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="a named configuration of your own, e.g. sift2k=features.type=sift,features.num_features=2000")
    p.add_argument("--config", default=None, help="base config (name or YAML) for every sequence, instead of "
                                                  "the one chosen per sequence (endoscopy for tubes, kitti ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="system.device of every run (default cpu: auto would import torch even for SIFT)")
    p.add_argument("--mode", choices=["sync", "threads"], default="sync",
                   help="sync: tracking and mapping in one thread, deterministic (default); threads: mapper thread")
    p.add_argument("--out", default=None, help="output folder (default runs/bench/SUITE)")
    p.add_argument("--repeat", type=int, default=1, help="runs per (sequence, config); the table gives medians")
    p.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: usable CPUs; 1 on cuda)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the jobs on a Ray cluster (host:port, ray://..., auto) or 'local' for a local instance")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed (a failed row)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames of each sequence")
    p.add_argument("--compare", default=None, metavar="OLD.json", help="flag regressions against an earlier results.json")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 3 when --compare finds a regression")
    p.add_argument("--strict", action="store_true", help="exit 4 when any run failed")
    p.add_argument("--profile", action="store_true", help="print where the milliseconds of a frame go, per run")
    p.add_argument("--cache", default=None, help="where synthetic sequences are rendered (default runs/bench-cache)")
    p.add_argument("--data", default=None, help="folder of real sequences for the 'real' suite (default ../shared/data)")
    p.add_argument("--presets", default=None, help="synthetic suites: comma-separated slam synth presets")
    p.add_argument("--seeds", default=None, help="synthetic suites: comma-separated seeds")
    p.add_argument("--frames", type=int, default=None, help="synthetic suites and soak: frames per sequence")
    p.add_argument("--size", default=None, help="synthetic suites and soak: image size WxH")
    p.add_argument("--list", action="store_true", help="list the suite's sequences and configurations, run nothing")
    soak = p.add_argument_group("soak (slam bench soak)")
    soak.add_argument("--max-keyframes", type=int, default=50, help="mapping.max_keyframes of the soak run")
    soak.add_argument("--sample-every", type=int, default=50, help="frames between memory samples")
    soak.add_argument("--preset", default="tube", help="synth preset of the soak sequence")
    p.add_argument("--quiet", action="store_true")


# ---------------------------------------------------------------------------------------------- helpers
def command_line(args: argparse.Namespace) -> str:
    """The command, rebuilt from ``args`` (only the options that differ from their defaults)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([args.suite]))
    parts = ["slam", "bench", args.suite]
    for action in parser._actions:
        dest = action.dest
        if dest in ("help", "suite") or not action.option_strings:
            continue
        value = getattr(args, dest, None)
        if value == defaults.get(dest):
            continue
        flag = action.option_strings[-1]
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InputError(f"--{what} expects comma-separated integers, got {text!r}") from None


def _usable_cpus() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def build_jobs(suite, variants, args, out: Path, workers: int) -> list:
    """One :class:`~slam.bench.jobs.Job` per (sequence, variant, repeat); sequences must be resolved."""
    from slam.bench.jobs import Job

    common = list(args.set)
    if args.device:
        common.append(f"system.device={args.device}")
    common.append(f"system.sync={'true' if args.mode == 'sync' else 'false'}")
    if args.max_frames:
        common.append(f"source.max_frames={int(args.max_frames)}")
    threads = max(_usable_cpus() // max(workers, 1), 1)
    jobs = []
    for seq in suite.sequences:
        for var in variants:
            for k in range(max(int(args.repeat), 1)):
                run_dir = out / "runs" / _safe(seq.name) / _safe(var.name) / f"r{k}"
                jobs.append(Job(
                    id=f"{seq.name}/{var.name}/r{k}", suite=suite.name, sequence=seq.name,
                    path=str(Path(seq.path).resolve()), variant=var.name, out_dir=str(run_dir.resolve()),
                    config=args.config or seq.config, overrides=[*seq.overrides, *var.overrides, *common],
                    calib=seq.calib, repeat=k, timeout_s=args.timeout, threads=threads,
                ))
    return jobs


def _materialise(sequences: list, cache: Path, workers: int) -> list:
    """Resolve every sequence's path, rendering missing synthetic ones in parallel processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    todo = {s.synth for s in sequences if s.path is None and s.synth is not None}
    missing = [sp for sp in todo if not (cache / sp.key / "synth.json").is_file()]
    if len(missing) > 1 and workers > 1:
        print(f"rendering {len(missing)} synthetic sequences into {cache} ...", flush=True)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(missing)), mp_context=ctx) as pool:
            list(pool.map(_render, missing, [cache] * len(missing)))
    elif missing:
        print(f"rendering {len(missing)} synthetic sequence(s) into {cache} ...", flush=True)
    return [s.resolved(cache) for s in sequences]


def _render(spec, cache):
    return spec.materialise(cache)


def _progress_line(row: dict, i: int, n: int) -> str:
    status = row.get("status")
    text = f"[{i}/{n}] {row['sequence']} / {row['config']}"
    if row.get("repeat"):
        text += f" r{row['repeat']}"
    if status != "ok":
        return f"{text}: {status.upper()} {row.get('error')}"
    ate = row.get("ate_rmse")
    ate_s = f"ATE {ate:.4f}" if ate is not None else "ATE -"
    return (f"{text}: {ate_s}  tracked {row.get('tracked_pct', 0):.1f}%  {row.get('fps', 0):.1f} fps  "
            f"peak {row.get('peak_rss_mb') or 0:.0f} MB  ({row.get('job_s', 0):.0f} s)")


def check_outputs(json_path: Path, md_path: Path) -> list[str]:
    """Re-read what was written: a valid results.json and a results.md with one table row per summary row."""
    from slam.bench.report import load_results

    try:
        data = load_results(json_path)
    except InputError as exc:
        return [str(exc)]
    md = md_path.read_text(encoding="utf-8")
    problems = []
    for s in data["summary"]:
        if f"| {s['sequence']} | {s['config']} |" not in md:
            problems.append(f"{md_path}: no table row for {s['sequence']} / {s['config']}")
    return problems


# ---------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.suite == "soak":
        return run_soak_command(args)
    from slam.bench import jobs as jobs_mod
    from slam.bench.report import (Thresholds, build_results, compare, load_results, machine_info, now_iso,
                                   thresholds_dict, write_results)
    from slam.bench.suites import DEFAULT_CACHE_DIR, get_suite, parse_variants
    from slam.synth import parse_size

    variants = parse_variants(args.configs.split(",") if args.configs else [])
    variants += parse_variants(args.variant)
    suite = get_suite(args.suite, data_dir=args.data, presets=tuple(args.presets.split(",")) if args.presets else None,
                      seeds=_ints(args.seeds, "seeds"), frames=args.frames, size=parse_size(args.size),
                      config=args.config)
    if not variants:
        variants = parse_variants(list(suite.default_configs))
    if len({v.name for v in variants}) != len(variants):
        from slam.errors import ConfigError

        raise ConfigError("a configuration name is given twice (--configs and --variant)")
    old = load_results(args.compare) if args.compare else None  # fail early on a bad file
    if args.list:
        for s in suite.sequences:
            print(f"{s.name}\t{s.path or '(synthetic: ' + s.synth.key + ')'}\tconfig {s.config} {' '.join(s.overrides)}")
        print("configurations: " + ", ".join(f"{v.name} ({' '.join(v.overrides)})" for v in variants))
        return 0
    out = Path(args.out or Path("runs") / "bench" / _safe(suite.name))
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else DEFAULT_CACHE_DIR
    n_runs = len(suite.sequences) * len(variants) * max(args.repeat, 1)
    workers = args.workers or (1 if args.device == "cuda" else min(_usable_cpus(), n_runs))
    workers = max(int(workers), 1)
    suite.sequences = _materialise(suite.sequences, cache, workers)
    jobs = build_jobs(suite, variants, args, out, workers)
    where = f"Ray ({args.ray})" if args.ray else f"{workers} worker process(es)"
    print(f"slam bench {suite.name}: {len(suite.sequences)} sequences x {len(variants)} configs x "
          f"{max(args.repeat, 1)} = {len(jobs)} runs on {where}; outputs in {out}", flush=True)
    done = [0]

    def on_row(row: dict) -> None:
        done[0] += 1
        if not args.quiet:
            print(_progress_line(row, done[0], len(jobs)), flush=True)

    if args.ray:
        rows = jobs_mod.run_ray(jobs, args.ray, on_row, num_cpus=args.workers)
    else:
        rows = jobs_mod.run_local(jobs, workers, on_row)
    meta = {
        "suite": suite.name, "description": suite.description, "command": command_line(args), "date": now_iso(),
        "machine": machine_info(args.device), "configs": {v.name: list(v.overrides) for v in variants},
        "repeat": max(args.repeat, 1), "workers": workers if not args.ray else f"ray:{args.ray}",
        "mode": args.mode, "device": args.device or "auto",
        "sequences": {s.name: {"path": s.path, "config": args.config or s.config, "overrides": list(s.overrides)}
                      for s in suite.sequences},
    }
    data = build_results(meta, rows)
    regressions = None
    if old is not None:
        meta["compare"] = str(args.compare)
        meta["thresholds"] = thresholds_dict(Thresholds())
        regressions = data["regressions"] = compare(old, data)
    js, md = write_results(out, data)
    problems = check_outputs(js, md)
    if args.profile:
        _print_profiles(rows)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {js} and {md}")
    if problems:
        for p in problems:
            log.error("malformed output: %s", p)
        return EXIT_MALFORMED
    if regressions:
        print(f"{len(regressions)} regression(s) against {args.compare}")
        if args.fail_on_regression:
            return EXIT_REGRESSION
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        print(f"{len(failed)} of {len(rows)} runs failed")
        if args.strict:
            return EXIT_FAILED_RUNS
    return 0


def _print_profiles(rows: list[dict]) -> None:
    import json

    from slam.bench.profile import format_profile

    for row in rows:
        if row.get("status") != "ok" or row.get("repeat"):
            continue
        try:
            stats = json.loads((Path(row["out_dir"]) / "stats.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        print(f"\n== {row['sequence']} / {row['config']}")
        print(format_profile(stats))
    print()


def run_soak_command(args: argparse.Namespace) -> int:
    """``slam bench soak``: long small synthetic sequence, memory over time; soak.json, soak.png, soak.md."""
    from slam.bench.report import describe_machine, machine_info, now_iso
    from slam.bench.soak import format_soak, run_soak
    from slam.bench.suites import DEFAULT_CACHE_DIR
    from slam.evaluation.trajectory import write_text_atomic
    from slam.synth import parse_size

    out = Path(args.out or Path("runs") / "bench" / "soak")
    frames = args.frames or 5000
    size = parse_size(args.size) or (160, 120)
    overrides = list(args.set)
    if args.device:
        overrides.append(f"system.device={args.device}")
    overrides.append(f"system.sync={'true' if args.mode == 'sync' else 'false'}")
    if args.configs:
        from slam.bench.suites import parse_variant

        overrides = list(parse_variant(args.configs.split(",")[0]).overrides) + overrides
    print(f"soak: {args.preset} {size[0]}x{size[1]}, {frames} frames, max_keyframes {args.max_keyframes}; "
          f"outputs in {out}", flush=True)
    result = run_soak(out, frames=frames, size=size, preset=args.preset, seed=_ints(args.seeds, "seeds")[0]
                      if args.seeds else 0, config=args.config, overrides=overrides,
                      max_keyframes=args.max_keyframes, sample_every=args.sample_every,
                      cache_dir=Path(args.cache) if args.cache else DEFAULT_CACHE_DIR, timeout_s=args.timeout)
    text = "\n".join([
        "# slam bench soak", "",
        f"- machine: {describe_machine(machine_info(args.device))}",
        f"- command: `{command_line(args)}`", f"- date: {now_iso()}", "",
        format_soak(result), "", "![soak](soak.png)", "",
    ])
    write_text_atomic(out / "soak.md", text)
    if args.profile and result["row"].get("status") == "ok":
        _print_profiles([result["row"]])
    print(text)
    if result["row"].get("status") != "ok":
        return EXIT_FAILED_RUNS if args.strict else 0
    a = result["analysis"]
    if args.strict and (a.get("rss_bounded") is False or a.get("map_bounded") is False):
        return EXIT_FAILED_RUNS
    return 0
