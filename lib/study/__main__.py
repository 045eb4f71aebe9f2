"""``python -m lib.study run STUDY [--datasets D,..] [--scheduler ADDRESS] [--workers N]`` and ``summarize STUDY``.

``run`` executes every run with a step out of date (none: nothing runs, nothing is written), then writes the
aggregates whose content changed; ``summarize`` only writes the aggregates from the runs' folders. With
``--datasets``, both do so for those datasets of the study only and keep the other datasets' committed rows
(``lib.study.spec.StudySpec.part``): a long study is finished one part at a time. Exit
status 0 when every run is complete, 1 when some run failed (one line each, with the cell that failed),
2 for a bad study file or option, 130 when interrupted (the same command resumes).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from lib.core.errors import InputError
from lib.core.paths import shown
from lib.study.spec import load_spec


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cluster's shutdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "summarize"])
    parser.add_argument("spec", help="the study file, e.g. studies/demo-seeds.yaml, or its name in studies/")
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler, e.g. tcp://HOST:8786 (default: $DASK_SCHEDULER_ADDRESS, else a local cluster)",
    )
    parser.add_argument("--workers", type=int, help="local cluster: worker processes (default: sized to the machine)")
    parser.add_argument(
        "--datasets",
        metavar="D,..",
        help="run and summarize only these datasets of the study; the others' committed rows are kept",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from lib.study.aggregate import summarize
    from lib.study.engine import closing_lines, run_study

    try:
        spec = load_spec(args.spec)
        if args.datasets is not None:
            spec = spec.part([d.strip() for d in args.datasets.split(",") if d.strip()])
        failed = 0
        if args.command == "run":
            outcome = run_study(spec, args.scheduler, args.workers)
            failed = len(outcome.failed)
            for line in closing_lines(spec, outcome):
                print(line, file=sys.stderr if line.startswith("FAILED") else sys.stdout, flush=True)
        elif args.workers is not None or args.scheduler:
            raise InputError("--scheduler/--workers", "apply to `run` only", "leave them out of `summarize`")
        summary = summarize(spec, write=True)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; the same command resumes", file=sys.stderr)
        return 130
    written = ", ".join(p.name for p in summary.written) or "nothing changed"
    ran = summary.runs[~summary.runs["dataset"].isin(summary.kept)]
    complete = len(ran.groupby(["dataset", "seed", *spec.grid]))
    kept = f"; the committed rows of {', '.join(summary.kept)} kept" if summary.kept else ""
    print(f"summary of {complete} of {len(spec.runs())} runs{kept} in {shown(spec.root)}/ (written: {written})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
