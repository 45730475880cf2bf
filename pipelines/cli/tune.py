"""`recsys tune`: search the hyperparameters (components/tuning/) and write the best config."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("recsys.tune")


def register(subparsers: argparse._SubParsersAction) -> None:
    from components.tuning.space import DEFAULT_SPACE
    from pipelines.cli.main import _add_columns

    p = subparsers.add_parser(
        "tune", help="search hyperparameters with Optuna and write the best config",
        description="Search the config values named in --space with Optuna (TPE sampler seeded "
        "by --seed, so a rerun on the same data reproduces the study (unless --storage "
        "continues an earlier one); a pruner stops a "
        "trial whose generators alone already rank worse than three quarters of the completed "
        "trials', or whose ranker's validation NDCG is under the median trial's at the same "
        "boosting round, checked every 25 rounds from round 50). Trials share the prepared data and every generator whose "
        "values did not change (the same trial values, sooner). Each trial "
        "fits the two-stage model on the training split minus a validation slice and is scored "
        "by NDCG@10 on that slice: the evaluation split that `recsys run` reports on is never "
        "seen (with --training-only, all of --data minus the validation slice). Trial 0 is --config itself (the untuned baseline). Prints one line per trial; "
        "every trial is an MLflow child run under one parent run (experiment recsys-tune in the "
        "--home store) holding the best config, each value's importance and the HTML report "
        "(the study's history and the importances as plots; also under --home/reports/). Writes the best "
        "config to --output, a YAML `recsys run --config` and `recsys fit --config` take. "
        "The summary line gives the study's wall seconds and its CPU seconds (all threads).")
    p.add_argument("--data", default="movielens-dslabs",
                   help="as `recsys run --data` (default: %(default)s)")
    p.add_argument("--items", default="", help="as `recsys run --items`")
    _add_columns(p)
    p.add_argument("--config", type=Path,
                   help="YAML config to start from: its values outside the space are kept")
    p.add_argument("--trials", type=int, default=20, help="trials to run (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop starting trials after this many seconds (default: no limit)")
    p.add_argument("--space", type=Path, default=None,
                   help=f"search space YAML: dotted config keys and ranges (default: components/tuning/{DEFAULT_SPACE.name}, "
                   "the generators' and the ranker's values)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage (sqlite:///study.db, postgresql+psycopg://...): the study "
                   "is kept there and a rerun continues it (default: in memory)")
    p.add_argument("--output", type=Path, default=Path("best.yaml"),
                   help="where to write the best config (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="the sampler's seed (and the synthetic data's) (default: %(default)s)")
    p.add_argument("--training-only", action="store_true",
                   help="--data is a training set already, its test set kept elsewhere (a "
                   "benchmark's split, say): set no evaluation split aside and carve the "
                   "validation slice from all of it (not with --compare, which scores on the "
                   "evaluation split)")
    p.add_argument("--no-pruning", action="store_true",
                   help="run every trial to the end (slower; shows what the pruner cut)")
    p.add_argument("--compare", action="store_true",
                   help="then fit the untuned and the tuned config on the training split and print "
                   "the metrics of each generator alone and of the two-stage model on the "
                   "evaluation split (the same users for all)")
    p.add_argument("--home", type=Path, default=None,
                   help="where the MLflow store is (default: $RECSYS_HOME or ./runs)")
    p.add_argument("--synthetic-users", type=int, default=1000)
    p.add_argument("--synthetic-items", type=int, default=500)
    p.add_argument("--synthetic-interactions", type=int, default=50000)
    p.set_defaults(func=cmd_tune)


def _write_report(result, home: Path, args: argparse.Namespace) -> Path:
    """The study's HTML report (history and importance plots), under the home's reports/ and
    on the MLflow parent run."""
    from components.release.registry import default_tracking_uri
    from components.tuning.tune_report import log_tune_report, render_tune_report

    page = render_tune_report(result, context={
        "data": args.data, "config": str(args.config or "defaults"),
        "space": str(args.space or "default"), "MLflow parent run": result.parent_run_id or "-",
    })
    path = home / "reports" / f"tune-{result.parent_run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    if result.parent_run_id:
        log_tune_report(default_tracking_uri(home), result.parent_run_id, page)
    return path


def _load_average() -> str:
    """The 1-minute load average, or "-" where the system does not tell."""
    try:
        import os

        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "-"


def cmd_tune(args: argparse.Namespace) -> int:
    import yaml

    from components.config import config_from_dict
    from components.data.ingest import load_dataset, parse_columns
    from components.errors import ConfigError, RecsysError
    from components.evaluation.report import metrics_table
    from components.release.registry import default_home, default_tracking_uri
    from components.tuning.space import load_space
    from components.tuning.tune import compare, tune

    if args.trials < 1:
        raise ConfigError(f"--trials must be 1 or more, not {args.trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, not {args.timeout:g}")
    base: dict = {}
    if args.config is not None:
        try:
            base = yaml.safe_load(args.config.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{args.config}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{args.config}: not valid YAML: {exc}") from None
    config_from_dict(base, source=str(args.config or "config"))
    if args.training_only and args.compare:
        raise ConfigError("--compare scores on the evaluation split, which --training-only "
                          "does not set aside: give one of them")
    space = load_space(args.space)
    columns = parse_columns(args.columns)
    if args.output.is_dir():
        raise ConfigError(f"--output {args.output}: is a directory; give a file name")
    started, cpu = time.monotonic(), time.process_time()
    dataset = load_dataset(args.data, args.items or None, columns=columns,
                           synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
                           synthetic_interactions=args.synthetic_interactions, seed=args.seed)
    log.info("loaded %s", dataset.describe())
    home = (args.home or default_home()).resolve()
    result = tune(dataset.interactions, dataset.items, base, space, trials=args.trials,
                  timeout=args.timeout, storage=args.storage, seed=args.seed,
                  tracking_uri=default_tracking_uri(home), training_only=args.training_only,
                  prune=not args.no_pruning, progress=print)
    try:
        args.output.write_text(result.best_config_yaml())
    except OSError as exc:
        raise RecsysError(f"--output {args.output}: cannot write: {exc.strerror or exc}") from None
    print()
    untuned = "-" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    # Wall seconds depend on what else runs on the machine; the process's CPU seconds (all its
    # threads) much less so.
    print(f"{len(result.trials)} trials in {time.monotonic() - started:.0f}s; "
          f"CPU {time.process_time() - cpu:.0f}s (load average {_load_average()}); validation ndcg@10: "
          f"best {result.best_value:.4f} (trial {result.best_number}), untuned {untuned}")
    if result.importances:
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))
    print(f"best config written to {args.output} (`recsys run --config {args.output}`); "
          f"MLflow parent run {result.parent_run_id}")
    print(f"HTML report: {_write_report(result, home, args)}")
    if args.compare:
        print()
        results = compare(dataset.interactions, dataset.items, base, result.best_config,
                          progress=print)
        print()
        print(metrics_table(results))
    return 0
