"""The ``jaxalign`` command (also ``python -m jaxalign``): subcommands over the library's entry
points. The only module that reads ``sys.argv``.

jaxalign train --config=configs/clip.py:demo --workdir=runs/demo [--config.KEY=VALUE ...]
    multi-process: JAXALIGN_* or SLURM variables, or --coordinator / --num-processes /
    --process-id, or --distributed (TPU pods); see jaxalign.parallel.distributed and launch/
jaxalign eval --workdir=runs/demo   # the run's evals again, from its newest checkpoint
jaxalign study --config=configs/studies/X.py --workdir=studies/X [--jobs=N | --status]
jaxalign plot --workdir=runs/demo   # the run's curves: runs/demo/curves.png
jaxalign env                        # versions, devices, processes and commit, as JSON

Exit status: 0 done; 2 a user error: a bad command line or config, missing or bad data or files,
an unusable or locked work directory (one line naming the key, the file or the directory, no
traceback); 1 a run that stopped itself (diverged, or checkpoint saves failing); 143 stopped by
SIGTERM / Ctrl-C after saving (run the same command to resume); 130 a second Ctrl-C (nothing
saved since the last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from jaxalign import __version__, host_memory


def _env(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from jaxalign import environment  # imports jax: keep `jaxalign --help` fast

    print(json.dumps(environment.describe(), indent=2))
    return 0


def _train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        print(f"unknown arguments {bad}; overrides are --config.KEY=VALUE", file=sys.stderr)
        return 2
    from jaxalign import config as config_lib
    from jaxalign import train
    from jaxalign.parallel import distributed

    try:
        launch = distributed.resolve(
            os.environ,
            coordinator=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            local_device_ids=args.local_device_ids,
            auto=args.distributed,
        )
    except train.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    distributed.initialize(launch)
    if launch.source != "single":
        import jax

        if jax.process_index() == 0:
            print(distributed.describe(launch), file=sys.stderr)
    try:
        config = config_lib.load(args.config, overrides)
        summary = train.train_and_evaluate(config, args.workdir, progress=args.progress)
    except train.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (train.RunStopped, OSError) as error:  # OSError: a full disk, a lost mount
        print(f"error: {error}", file=sys.stderr)
        return 1
    except train.Preempted as stop:
        print(f"{stop}; run the same command again to resume", file=sys.stderr)
        return train.PREEMPTED_EXIT_CODE
    import jax

    if jax.process_index() == 0:  # one summary for the job
        print(json.dumps(summary, indent=2))
    return 0


def _eval(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from jaxalign import train

    try:
        results = train.evaluate_workdir(
            args.workdir, progress=args.progress, config_file=args.config
        )
    except train.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


def _study(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from jaxalign import train
    from jaxalign.studies import study as study_lib

    try:
        study = study_lib.load_study(args.config)
        if args.print_launch is not None:
            launcher = args.print_launch.split() if args.print_launch else []
            print("\n".join(study_lib.launch_commands(study, args.workdir, launcher)))
            return 0
        if args.status:
            by_state = study_lib.status(study, args.workdir)
            print(", ".join(f"{len(by_state[s])} {s}" for s in study_lib.STATES))
            return 0
        from jaxalign.studies import seed_bundle

        final = study_lib.run_study(
            study,
            args.workdir,
            train.train_and_evaluate,
            train_seeds=seed_bundle.train_seeds,
            jobs=args.jobs,
            retry_failed=args.retry_failed,
        )
    except (ValueError, train.UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except train.Preempted as stop:
        print(f"{stop}; run the same command again to go on", file=sys.stderr)
        return train.PREEMPTED_EXIT_CODE
    from jaxalign.studies import plots, report

    print(", ".join(f"{len(final[s])} {s}" for s in study_lib.STATES))
    pictures = plots.study_plots(study, args.workdir)
    print("report: " + ", ".join(report.write_report(study, args.workdir, pictures) + pictures))
    return 1 if final["failed"] else 0


def _plot(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from jaxalign.studies import plots

    try:
        print(plots.run_curves(args.workdir))
    except (ValueError, OSError) as error:  # no rows; no metrics.jsonl
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxalign", description="Representation learning over the global batch."
    )
    parser.add_argument("--version", action="version", version=f"jaxalign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print versions, devices, processes and git commit")
    env.set_defaults(run=_env)
    train = commands.add_parser(
        "train",
        help="train a config in a work directory (resumes there); --config.KEY=VALUE overrides",
    )
    train.add_argument("--config", required=True, help="file.py[:preset], e.g. configs/clip.py")
    train.add_argument("--workdir", required=True, help="the run's directory (resumes there)")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job JAX detects itself (TPU pods, Open MPI) when neither "
        "the flags below, JAXALIGN_* variables nor SLURM describe one (those need no flag)",
    )
    train.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process)")
    train.add_argument("--num-processes", help="processes in the job (with --coordinator)")
    train.add_argument("--process-id", help="this process's index, 0 .. N-1")
    train.add_argument("--local-device-ids", help="this process's devices, e.g. 0,1")
    train.set_defaults(run=_train, takes_overrides=True)
    evaluate = commands.add_parser("eval", help="re-run a run's evals from its newest checkpoint")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument(
        "--config", help="the config file that defines the run's task, if it is not built in"
    )
    evaluate.set_defaults(run=_eval)
    study = commands.add_parser(
        "study", help="run a study's grid of configs x seeds (resumes; skips finished runs)"
    )
    study.add_argument("--config", required=True, help="a study file, configs/studies/*.py")
    study.add_argument("--workdir", required=True, help="the study's directory")
    study.add_argument("--status", action="store_true", help="count runs by state and stop")
    study.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    study.add_argument(
        "--jobs", type=int, default=1, help="runs trained at a time, each its own process"
    )
    study.add_argument(
        "--print-launch",
        nargs="?",
        const="",
        metavar="LAUNCHER",
        help="print a `jaxalign train` command per run not done (after LAUNCHER, e.g. "
        "'launch/local.sh 1 --') instead of training",
    )
    study.set_defaults(run=_study)
    plot = commands.add_parser("plot", help="draw a run's metrics.jsonl into RUN/curves.png")
    plot.add_argument("--workdir", required=True, help="the run's directory")
    plot.set_defaults(run=_plot)
    for command in (train, evaluate):
        command.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bar (default: when stderr is a terminal)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args, extra)


def run() -> None:
    """The console entry point: ``main`` with a clean exit on Ctrl-C outside the training loop
    (while importing, or a second Ctrl-C): one line, exit status 130, and no interpreter
    shutdown racing XLA's or orbax's threads. Before anything, on Linux with glibc, the command
    starts itself again with transparent huge pages for malloc (``jaxalign.host_memory``)."""
    host_memory.restart_with_huge_pages()
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted; nothing saved since the last checkpoint", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
