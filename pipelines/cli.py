"""`recsys`: the command line of the product.

Every subcommand has --help; long work logs its progress; every failure the user can fix is one
line on stderr and a non-zero exit (RecsysError), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from components.errors import RecsysError

log = logging.getLogger("recsys")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the KFP training pipeline locally (no cluster)",
        description="Run fingerprint → ingest → validate → split → train → evaluate → register → deploy with "
        "kfp.local on this machine; MLflow is a SQLite store under --home.",
    )
    p.add_argument("--data", default="movielens-dslabs",
                   help="built-in name (movielens-dslabs, synthetic), an ml-100k or MovieLens CSV "
                   "directory, an interactions CSV/Parquet file, s3://BUCKET/KEY or PREFIX/, a "
                   "SQL URL with ?table=NAME or ?query=SELECT ... (postgresql+psycopg://, "
                   "sqlite:///), or dvc://REPO//PATH@REV (default: %(default)s)")
    p.add_argument("--items", default="",
                   help="items CSV/Parquet file for a generic interactions file (or a URL as --data)")
    p.add_argument("--data-version", default="",
                   help="the data's version, for a SQL source with no timestamp column or one "
                   "updated in place: the fingerprint that caching and lineage follow")
    p.add_argument("--config", type=Path, help="YAML config (unknown keys are errors)")
    p.add_argument("--home", type=Path, default=None,
                   help="where runs, the MLflow store and reports go (default: $RECSYS_HOME or ./runs)")
    p.add_argument("--synthetic-users", type=int, default=1000)
    p.add_argument("--synthetic-items", type=int, default=500)
    p.add_argument("--synthetic-interactions", type=int, default=50000)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from components.config import load_config
    from components.registry import default_home
    from components.report import metrics_table  # noqa: F401 (checked before the long run)
    from pipelines.local import run_local

    load_config(args.config)  # fail fast, before any step starts
    config_yaml = args.config.read_text() if args.config else ""
    home = args.home or default_home()
    started = time.monotonic()
    summary = run_local(
        source=args.data, items=args.items, config_yaml=config_yaml, home=home,
        synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
        synthetic_interactions=args.synthetic_interactions, seed=args.seed,
        data_version=args.data_version,
    )
    reg, dep = summary["registration"], summary["deployment"]
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
        print(f"Deployed locally: `recsys serve` serves version {dep['version']} from {dep['model_dir']}")
    print(f"HTML report: {report}")
    db = summary["tracking_uri"]
    print(f"MLflow UI:   mlflow ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)")
    return 0


def _add_compile(sub: argparse._SubParsersAction) -> None:
    from components.kfp_components import DEFAULT_IMAGE
    from pipelines.pipeline import COMPILED_PATH

    p = sub.add_parser("compile", help="write the pipeline's IR YAML for a Kubeflow UI",
                       description="Compile the training pipeline to KFP v2 IR YAML.")
    p.add_argument("--output", type=Path, default=COMPILED_PATH, help="default: %(default)s")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="the project image every step runs in")
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.pipeline import compile_pipeline

    print(compile_pipeline(args.output, args.image))
    return 0


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
    p.add_argument("--config", type=Path, help="YAML config")
    p.add_argument("--output", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--workers", type=int, default=0,
                   help="build the ranker's examples and train it on an embedded Dask cluster of "
                   "this many worker processes (default: 0, single process)")
    p.add_argument("--scheduler", default="",
                   help="address of a running Dask scheduler to use instead (tcp://host:8786)")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from components.artifact import save_model
    from components.config import config_to_dict, load_config
    from components.data import load_dataset
    from components.models.two_stage import TwoStageRecommender

    from components.distributed import dask_client

    config = load_config(args.config)
    if args.workers < 0:
        raise RecsysError(f"--workers must be 0 or more, not {args.workers}")
    started = time.monotonic()
    dataset = load_dataset(args.interactions, args.items)
    log.info("loaded %s", dataset.describe())
    with dask_client(args.workers, args.scheduler) as client:
        model = TwoStageRecommender(config.model, config.split).fit(
            dataset.interactions, dataset.items, progress=log.info, client=client
        )
    save_model(model, args.output, data_fingerprint=dataset.fingerprint,
               extra={"full_config": config_to_dict(config), "dataset": dataset.name})
    print(f"wrote {args.output} in {time.monotonic() - started:.1f}s")
    return 0


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="batch top-k recommendations for users in a file",
                       description="Write user_id,item_id,rank,score for every user of --users "
                       "(a CSV with a user_id column); training items are excluded and unknown "
                       "users get the cold-start answer.")
    p.add_argument("--model", type=Path, required=True, help="model artifact directory")
    p.add_argument("--users", type=Path, required=True, help="CSV with a user_id column")
    p.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="CSV to write")
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    from components.artifact import load_model
    from components.batch import recommend_file

    model = load_model(args.model)
    n = recommend_file(model, args.users, args.k, args.output, progress=log.info)
    print(f"wrote {n:,} rows to {args.output}")
    return 0


# Modules that add their own subcommands (serving, cluster operations).
_SUBCOMMAND_MODULES: tuple[str, ...] = ("pipelines.cli_serve", "pipelines.cli_cluster")


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
