"""``slam bench``: accuracy, speed and memory of configurations over suites of sequences.

Modules: ``suites`` (which sequences: quick, synthetic, real, a folder; which configurations),
``jobs`` (one run in an isolated worker process -> a row; local workers or Ray), ``report``
(results.json / results.md, validation, ``--compare``), ``soak`` (long run, memory over time),
``profile`` (where the milliseconds of a frame go), ``command`` (the CLI subcommand).
"""

from slam.bench.jobs import Job, execute_isolated, run_job, run_local, run_ray
from slam.bench.profile import format_profile
from slam.bench.report import compare, load_results, summarise, validate_results
from slam.bench.suites import Sequence, Suite, SynthSpec, Variant, get_suite, parse_variants

__all__ = ["Job", "Sequence", "Suite", "SynthSpec", "Variant", "compare", "execute_isolated", "format_profile",
           "get_suite", "load_results", "parse_variants", "run_job", "run_local", "run_ray", "summarise",
           "validate_results"]
