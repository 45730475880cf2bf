"""`recsys`: the command line of the product.

Every subcommand has --help; long work logs its progress; every failure the user can fix is one
line on stderr and a non-zero exit (RecsysError), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from components.errors import RecsysError

log = logging.getLogger("recsys")


def command(name: str = "recsys") -> str:
    """How to type `name` (recsys, mlflow: the virtualenv's executables) so that a printed
    command works when copied: the bare name when the shell finds this very executable on the
    PATH, else its path (relative to the working directory when under it, `.venv/bin/recsys`)."""
    here = Path(sys.argv[0]) if Path(sys.argv[0]).name == "recsys" else None
    candidate = (here.parent if here else Path(sys.executable).parent) / name
    found = shutil.which(name)
    if found and (not candidate.exists() or Path(found).resolve() == candidate.resolve()):
        return name
    if not candidate.exists():
        return f"{sys.executable} -m pipelines.cli.main" if name == "recsys" else name
    absolute = candidate.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the KFP training pipeline locally (no cluster)",
        description="Run fingerprint → ingest → validate → split → tune → train → evaluate → register → "
        "deploy with kfp.local on this machine; MLflow is a SQLite store under --home. Prints one "
        "line per step; the steps' own output goes to a log file under --home (--verbose prints "
        "it too). The tune step only passes the config on unless --tune-trials is given.",
    )
    p.add_argument("--data", default="movielens-dslabs",
                   help="built-in name (movielens-dslabs, synthetic), an ml-100k or MovieLens CSV "
                   "directory, an interactions CSV/Parquet file, s3://BUCKET/KEY or PREFIX/, a "
                   "SQL URL with ?table=NAME or ?query=SELECT ... (postgresql+psycopg://, "
                   "sqlite:///), or dvc://REPO//PATH@REV (default: %(default)s)")
    p.add_argument("--items", default="",
                   help="items CSV/Parquet file for a generic interactions file (or a URL as --data)")
    _add_columns(p)
    p.add_argument("--data-version", default="",
                   help="the data's version, for a SQL source with no timestamp column or one "
                   "updated in place: the fingerprint that caching and lineage follow")
    p.add_argument("--feedback", default="", metavar="URL_OR_FILE",
                   help="also train on these feedback events: a feedback store URL "
                   "(sqlite:///..., postgresql+psycopg://...) or an events file (JSON lines or CSV)")
    p.add_argument("--config", type=Path, help="YAML config (unknown keys are errors)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="register under this MLflow model name (the config's registry.model_name, "
                   "default recsys): a model of another data set than the champion's is "
                   "registered without an alias; under a name of its own it starts its own "
                   "champion")
    p.add_argument("--home", type=Path, default=None,
                   help="where runs, the MLflow store and reports go (default: $RECSYS_HOME or ./runs)")
    p.add_argument("--synthetic-users", type=int, default=1000)
    p.add_argument("--synthetic-items", type=int, default=500)
    p.add_argument("--synthetic-interactions", type=int, default=50000)
    p.add_argument("--seed", type=int, default=42,
                   help="the synthetic data's seed and the tuning sampler's (default: %(default)s)")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune first: N Optuna trials (as `recsys tune`, scored on a validation "
                   "slice of the training split) and train, evaluate and register the best "
                   "config; the study is kept per data, space and config, so a rerun on the "
                   "same ones reuses its best and runs no trial (default: %(default)s, no tuning)")
    p.add_argument("--tune-space", type=Path, default=None, metavar="FILE",
                   help="search space YAML for --tune-trials (default: the one `recsys tune` uses)")
    p.add_argument("--tune-storage", default="", metavar="URL",
                   help="Optuna storage for the tune step's study (sqlite:///..., "
                   "postgresql+psycopg://...; default: tune.db under --home)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every step's output (always kept in logs/run-<time>.log under --home)")
    p.set_defaults(func=cmd_run)


def _with_model_name(config_yaml: str, name: str) -> str:
    """The config with `registry.model_name` set (MLflow takes any name; a blank or a name with
    a quote or a slash would break the registry's searches and URIs)."""
    import yaml

    from components.config import config_from_dict
    from components.errors import ConfigError

    if not name.strip() or any(c in name for c in "'\"/\\") or name != name.strip():
        raise ConfigError(f"--model-name {name!r}: give a name without quotes, slashes or "
                          "surrounding spaces")
    raw = yaml.safe_load(config_yaml or "") or {}
    raw.setdefault("registry", {})["model_name"] = name
    config_from_dict(raw, source="--model-name")
    return yaml.safe_dump(raw, sort_keys=False)


def _tune_space(args: argparse.Namespace) -> str:
    """The space's text for the tune step (its cache follows the text, not a path), checked
    here; empty when not tuning."""
    from components.errors import ConfigError
    from components.tuning.space import DEFAULT_SPACE, parse_space

    if args.tune_trials < 0:
        raise ConfigError(f"--tune-trials must be 0 (no tuning) or more, not {args.tune_trials}")
    if args.tune_trials == 0:
        if args.tune_space is not None or args.tune_storage:
            raise ConfigError("--tune-space and --tune-storage need --tune-trials N")
        return ""
    path = args.tune_space or DEFAULT_SPACE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read search space: {exc.strerror}") from None
    parse_space(text, str(path))
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from components.config import load_config
    from components.data.ingest import parse_columns
    from components.evaluation.report import metrics_table  # fail fast, before the long run
    from components.release.registry import default_home
    from pipelines.cli.monitor import record_training_source
    from pipelines.local import run_local

    load_config(args.config)  # fail fast, before any step starts
    parse_columns(args.columns)
    tune_space = _tune_space(args)
    config_yaml = args.config.read_text() if args.config else ""
    if args.model_name is not None:
        config_yaml = _with_model_name(config_yaml, args.model_name)
    home = args.home or default_home()
    data = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
    items = str(Path(args.items).resolve()) if args.items and Path(args.items).exists() else args.items
    started = time.monotonic()
    summary = run_local(
        source=args.data, items=args.items, config_yaml=config_yaml, home=home,
        synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
        synthetic_interactions=args.synthetic_interactions, seed=args.seed,
        data_version=args.data_version, feedback=args.feedback, verbose=args.verbose,
        columns=args.columns, tune_trials=args.tune_trials, tune_space=tune_space,
        tune_storage=args.tune_storage,
    )
    reg, dep = summary["registration"], summary["deployment"]
    if args.tune_trials:  # the tuned config, as train fitted it
        from components.steps import trained_config_yaml

        config_yaml = trained_config_yaml(reg)
    # `recsys monitor` retrains on the same source (plus the feedback) with the same config.
    record_training_source(home.resolve(), {
        "data": data, "items": items, "config_yaml": config_yaml,
        "synthetic_users": args.synthetic_users, "synthetic_items": args.synthetic_items,
        "synthetic_interactions": args.synthetic_interactions, "seed": args.seed,
        "data_version": args.data_version, "columns": args.columns,
    })
    results = json.loads(Path(summary["results_path"]).read_text())
    # A stable, browsable name for the report of this model version.
    report = home.resolve() / "reports" / f"{reg['model_name']}-v{reg['version']}.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(summary["report_path"], report)
    print()
    print(f"Pipeline finished in {time.monotonic() - started:.0f}s on {args.data}.")
    print()
    print(metrics_table(results))
    print()
    print(f"MLflow model '{reg['model_name']}' version {reg['version']}: "
          f"alias {reg['alias'] or 'none (gate refused)'} - {reg['reason']}")
    if dep.get("action") == "local":
        tried = dep.get("challenger")
        print(f"Deployed locally: `{command()} serve` serves version {dep['version']} from {dep['model_dir']}"
              + (f", and version {tried['version']} to {tried['percent']:g}% of users as the "
                 "challenger" if tried else ""))
    print(f"HTML report: {report}")
    db = summary["tracking_uri"]
    print(f"MLflow UI:   {command('mlflow')} ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)")
    from serving.console.config import DEFAULT_PORT

    recsys = command()
    print(f"Console:     {recsys} console --home {home.resolve()}   (then open "
          f"http://127.0.0.1:{DEFAULT_PORT}; `{recsys} serve` and `{recsys} events serve` beside "
          "it for Try it)")
    return 0


def _add_compile(sub: argparse._SubParsersAction) -> None:
    from components.kfp_components import DEFAULT_IMAGE, SERVING_IMAGE
    from pipelines.monitoring import COMPILED_PATH as MONITORING_PATH
    from pipelines.pipeline import COMPILED_PATH

    p = sub.add_parser("compile", help="write the pipelines' IR YAML for a Kubeflow UI",
                       description="Compile the training and the monitoring pipelines to KFP v2 IR "
                       "YAML. Without --output it regenerates the committed files (what `make "
                       "compile` does), with the default images only; for your own images, write "
                       "to a file of yours with --output (and --pipeline).")
    p.add_argument("--pipeline", choices=("all", "training", "monitoring"), default=None,
                   help="which pipeline (default: all, or training when --output names a file)")
    p.add_argument("--output", type=Path, default=None,
                   help=f"file to write, for one pipeline (default: {COMPILED_PATH} and "
                   f"{MONITORING_PATH})")
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help="the pipeline image every step runs in (the Dockerfile's pipeline target) "
                   "(default: %(default)s)")
    p.add_argument("--serving-image", default=SERVING_IMAGE,
                   help="the image the deploy step serves the model with (the Dockerfile's "
                   "default target) (default: %(default)s)")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    from components.errors import ConfigError
    from components.kfp_components import DEFAULT_IMAGE, SERVING_IMAGE
    from pipelines.monitoring import COMPILED_PATH as MONITORING_PATH
    from pipelines.monitoring import compile_monitoring_pipeline
    from pipelines.pipeline import COMPILED_PATH, compile_pipeline

    if args.pipeline is None:
        args.pipeline = "training" if args.output is not None else "all"
    if args.output is not None and args.pipeline == "all":
        raise ConfigError("--output names one file: add --pipeline training or --pipeline monitoring")
    if args.output is None and (args.image, args.serving_image) != (DEFAULT_IMAGE, SERVING_IMAGE):
        raise ConfigError("other images would change the committed pipelines/compiled/*.yaml: "
                          "pass --output FILE (and --pipeline training or monitoring)")
    try:
        for name, default, compile_ in (("training", COMPILED_PATH, compile_pipeline),
                                        ("monitoring", MONITORING_PATH, compile_monitoring_pipeline)):
            if args.pipeline in ("all", name):
                target = args.output or default
                written = compile_(target, args.image, args.serving_image)
                what = ("the committed file, regenerated" if args.output is None
                        else f"images {args.image} and {args.serving_image}")
                print(f"wrote the {name} pipeline to {written} ({what})")
    except OSError as exc:
        raise RecsysError(f"--output {target}: cannot write: {exc.strerror or exc}") from None
    return 0


def _add_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default="", metavar="KEY=COLUMN,...",
                   help="the interactions' columns when they are named otherwise than user_id, "
                   "item_id, rating, timestamp: e.g. user=userId,item=movieId,rating=rating,"
                   "timestamp=ts (any of the four keys)")


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train the two-stage model on all of a file (no split)",
                       description="Train on every interaction of --interactions and write the "
                       "model artifact directory.")
    p.add_argument("--interactions", required=True,
                   help="interactions CSV/Parquet (user_id, item_id[, rating, timestamp]), a "
                   "MovieLens directory, a built-in dataset name, or an s3://, SQL or dvc:// URL "
                   "(as `recsys run --data`)")
    p.add_argument("--items", help="items CSV/Parquet (item_id[, title, genres, year, description]) "
                   "or URL")
    _add_columns(p)
    p.add_argument("--config", type=Path, help="YAML config")
    p.add_argument("--output", type=Path, required=True,
                   help="artifact directory to write: a new or empty directory, or an earlier "
                   "artifact to replace (anything else is refused, never deleted)")
    p.add_argument("--workers", type=int, default=0,
                   help="build the ranker's examples and train it on an embedded Dask cluster of "
                   "this many worker processes (default: 0, single process)")
    p.add_argument("--scheduler", default="",
                   help="address of a running Dask scheduler to use instead (tcp://host:8786)")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from components.config import config_to_dict, load_config
    from components.data.ingest import load_dataset, parse_columns
    from components.models.artifact import check_output_dir, save_model
    from components.models.distributed import dask_client
    from components.models.two_stage import TwoStageRecommender
    from components.monitoring.drift_reference import save_references

    # Before any work: a wrong --output is found in a second, not after training.
    check_output_dir(args.output, keep=(args.interactions, args.items or "", args.config or ""))
    config = load_config(args.config)
    columns = parse_columns(args.columns)
    if args.workers < 0:
        raise RecsysError(f"--workers must be 0 or more, not {args.workers}")
    started = time.monotonic()
    dataset = load_dataset(args.interactions, args.items, columns=columns)
    log.info("loaded %s", dataset.describe())
    with dask_client(args.workers, args.scheduler) as client:
        model = TwoStageRecommender(config.model, config.split).fit(
            dataset.interactions, dataset.items, progress=log.info, client=client
        )
    references = _fit_references_on_holdout(model, dataset.interactions, config)
    save_model(model, args.output, data_fingerprint=dataset.fingerprint,
               extra={"full_config": config_to_dict(config), "dataset": dataset.name},
               write_extra=(lambda d: save_references(references, d)) if references else None)
    print(f"wrote {args.output} in {time.monotonic() - started:.1f}s")
    return 0


def _fit_references_on_holdout(model, interactions, config):
    """Drift references for a model fitted on all the data: the split's held-out part stands
    for what serving will see (the model has seen it too). None where the data cannot be split."""
    from components.data.split import split_interactions
    from components.errors import DataValidationError
    from components.monitoring.drift_reference import fit_references

    try:
        heldout = split_interactions(interactions, config.split).test
    except DataValidationError as exc:
        log.info("no drift references: %s", exc)
        return None
    if heldout.empty:
        log.info("no drift references: the split holds nothing out")
        return None
    return fit_references(model, heldout, config.monitoring, source="held-out split of the data")


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="batch top-k recommendations for users in a file",
                       description="Write user_id,item_id,rank,score,cold_start for every user of "
                       "--users (a CSV with a user_id column); training items are excluded, and "
                       "users unseen in training get the cold-start answer (cold_start true).")
    p.add_argument("--model", type=Path, required=True, help="model artifact directory")
    p.add_argument("--users", type=Path, required=True, help="CSV with a user_id column")
    p.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="CSV to write")
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    from components.models.artifact import load_model
    from components.models.batch import recommend_file

    model = load_model(args.model)
    written = recommend_file(model, args.users, args.k, args.output, progress=log.info)
    print(f"wrote {written.rows:,} rows for {written.users:,} users to {args.output}; "
          f"{written.cold_start:,} of them unseen in training got the cold-start answer "
          "(cold_start column)")
    return 0


# Modules that add their own subcommands (serving, cluster operations).
_SUBCOMMAND_MODULES: tuple[str, ...] = ("pipelines.cli.serve", "pipelines.cli.cluster",
                                         "pipelines.cli.events", "pipelines.cli.monitor",
                                         "pipelines.cli.simulate", "pipelines.cli.console",
                                         "pipelines.cli.tune")


# Libraries that log every call at INFO (httpx: one "HTTP Request: POST ..." line per request).
_CHATTY_LOGGERS = ("httpx", "httpcore")


def quiet_libraries() -> None:
    """What a command prints is its own output: the libraries' per-request INFO lines and
    MLflow's download progress bars only with --verbose (the commands that have it)."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Two-stage recommender, MLOps style: KFP pipeline, MLflow registry, KServe serving.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_compile, _add_fit, _add_recommend):
        add(sub)
    for module in _SUBCOMMAND_MODULES:
        __import__(module, fromlist=["register"]).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "verbose", False):
        quiet_libraries()
    try:
        return args.func(args)
    except RecsysError as exc:
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"recsys {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
