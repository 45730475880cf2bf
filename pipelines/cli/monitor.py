"""`recsys monitor`: run the monitoring pipeline once on this machine and print the decision.

With no flags it checks what `recsys serve` (request log in `<home>/requests`) and
`recsys events serve` (feedback store `<home>/feedback.db`) stored in the run home, against the
champion the last `recsys run` registered; on `retrain` the training pipeline runs on the source
that `recsys run` trained on (recorded in `<home>/training_source.json`) plus the feedback.

Once the check has run, its decision is printed (JSON with --json), whatever the retraining
then does; see EXIT_CODES.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from components.errors import RecsysError

SOURCE_RECORD = "training_source.json"
RETRAINING_FAILED = 3
EXIT_CODES = f"""\
exit codes:
  0  the check ran and its decision is printed: ok, alert (a reason holds but no feedback
     interaction is newer than the champion's training data, so nothing was retrained), or
     retrain (retrained, or not with --check-only)
  1  no decision: bad input, nothing to check, or the check itself failed (one line on stderr)
  2  bad command line
  {RETRAINING_FAILED}  the check decided retrain and its decision is printed, but the retraining failed
     (its cause on stderr)"""


def record_training_source(home: Path, source: dict[str, Any]) -> None:
    """What `recsys run` trained on, so that a later retrain uses the same source."""
    home.mkdir(parents=True, exist_ok=True)
    (home / SOURCE_RECORD).write_text(json.dumps(source, indent=2))


def _training_source(home: Path) -> dict[str, Any]:
    path = home / SOURCE_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _default_feedback(home: Path) -> str:
    """The run home's feedback store, when `recsys events serve` created one."""
    from components.feedback.feedback_store import STORE_FILE, default_store_url

    return default_store_url(home) if (home / STORE_FILE).is_file() else ""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="check served records and feedback for drift; retrain when needed (local run)",
        description="Run the monitoring pipeline once with the KFP local runner: test the "
        "window of served records and feedback events against the champion's drift references, "
        "decide retrain (drift, staleness, online metric drop, new data volume) or ok, write an "
        "HTML report, and on retrain run the training pipeline on the source plus the feedback "
        "(its gate decides whether the new model becomes the challenger). A reason to retrain "
        "with no feedback interaction newer than the champion's training data is an alert: "
        "retraining would read the same data again, so it is not launched.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--home", type=Path, default=None, help="run home (default: $RECSYS_HOME or ./runs)"
    )
    p.add_argument(
        "--request-log",
        default=None,
        metavar="DIR",
        help="request-log directory (default: <home>/requests when it exists, else the "
        "feedback store's impressions)",
    )
    p.add_argument(
        "--feedback",
        default=None,
        metavar="URL_OR_FILE",
        help="feedback store URL or events file (JSON lines or CSV) (default: "
        "<home>/feedback.db when it exists)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML config; its `monitoring` keys are the thresholds (default: the one "
        "the last `recsys run` used)",
    )
    p.add_argument(
        "--as-of",
        type=float,
        default=0.0,
        metavar="UNIX_SECONDS",
        help="end of the checked window (default: now)",
    )
    p.add_argument("--check-only", action="store_true", help="decide and report, never retrain")
    p.add_argument(
        "--pushgateway",
        default="",
        metavar="HOST:PORT",
        help="also push the decision and per-feature drift to this Prometheus "
        "Pushgateway (job recsys-monitoring)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"decision", "reasons", "no_retrain_reason", "drift": {feature: {"p_value", '
        '"drift"}}, ...} on stdout (the steps\' output goes to stderr)',
    )
    p.set_defaults(func=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    from components.config import load_config
    from components.release.registry import default_home
    from pipelines.local import run_monitoring_local

    home = (args.home or default_home()).resolve()
    source = _training_source(home)
    if args.config is not None:
        load_config(args.config)  # fail fast, before any step starts
        config_yaml = args.config.read_text()
    else:
        config_yaml = source.get("config_yaml", "")
    request_log = args.request_log
    if request_log is None:
        request_log = str(home / "requests") if (home / "requests").is_dir() else ""
    elif not Path(request_log).is_dir():
        raise RecsysError(f"--request-log {request_log}: no such directory")
    feedback = args.feedback if args.feedback is not None else _default_feedback(home)
    if args.feedback and "://" not in args.feedback and not Path(args.feedback).is_file():
        raise RecsysError(f"--feedback {args.feedback}: no such events file")
    if not request_log and not feedback:  # say so now, not after the pipeline has started
        raise RecsysError(
            f"nothing to check under {home}: no request log ({home / 'requests'}) and no feedback "
            "store (feedback.db); serve the model with `recsys serve` (it logs its answers there), "
            "post events with `recsys events serve`, or pass --request-log DIR / --feedback"
        )
    started, started_at = time.monotonic(), time.time()
    try:
        summary = run_monitoring_local(
            home=home,
            request_log=request_log,
            feedback=feedback,
            config_yaml=config_yaml,
            as_of=args.as_of,
            allow_retrain=not args.check_only,
            quiet_stdout=args.json,
            pushgateway=args.pushgateway,
            source=source.get("data", "movielens-dslabs"),
            items=source.get("items", ""),
            synthetic_users=source.get("synthetic_users", 1000),
            synthetic_items=source.get("synthetic_items", 500),
            synthetic_interactions=source.get("synthetic_interactions", 50000),
            seed=source.get("seed", 42),
            data_version=source.get("data_version", ""),
            columns=source.get("columns", ""),
        )
    except RecsysError as exc:
        check = _check_of_failed_run(home, started_at)
        if check is None:  # the check itself failed: no decision to print
            raise
        _print_decision(args, check, None, _keep_report(home, {"check": check}), started)
        print(f"recsys monitor: error: the retraining failed: {exc}", file=sys.stderr)
        return RETRAINING_FAILED
    check, retraining = summary["check"], summary.get("retraining")
    _print_decision(args, check, retraining, _keep_report(home, summary), started)
    return 0


def _check_of_failed_run(home: Path, started_at: float) -> dict[str, Any] | None:
    """The decision of this run's drift check, when the run failed after it (the local
    runner keeps each step's outputs under `<pipeline_root>/<run>/<task>/`)."""
    found = [
        path
        for path in (home / "pipeline_root").glob("recsys-monitoring-*/drift-check-op/report.json")
        if path.stat().st_mtime >= started_at - 1
    ]
    if not found:
        return None
    path = max(found, key=lambda p: p.stat().st_mtime)
    check = json.loads(path.read_text())
    check["report_path"] = str(path.with_suffix(""))
    return check


def _print_decision(
    args: argparse.Namespace,
    check: dict[str, Any],
    retraining: dict[str, Any] | None,
    report: Path | None,
    started: float,
) -> None:
    from components.monitoring.monitor import finite

    if args.json:
        out = {
            "decision": check["decision"],
            "reasons": check["reasons"],
            "no_retrain_reason": check.get("no_retrain_reason"),
            "drift": {
                key: {"p_value": value["p_value"], "drift": value["drift"]}
                for key, value in check["drift"].items()
            },
            "notes": check["notes"],
            "model_version": check["model_version"],
            "window": check["window"],
            "online": check.get("online"),
            "report": str(report) if report else None,
            "retraining": _retraining_brief(retraining),
        }
        print(json.dumps(finite(out), indent=2, default=str, allow_nan=False), flush=True)
        return
    print()
    print(f"Monitoring finished in {time.monotonic() - started:.0f}s: {check['decision'].upper()}")
    for reason in check["reasons"]:
        print(f"  reason: {reason}")
    for note in check["notes"]:
        print(f"  note:   {note}")
    drifted = [k for k, v in check["drift"].items() if v["drift"]]
    print(
        f"  {len(check['drift'])} features tested, drift in {len(drifted)}"
        + (f": {', '.join(drifted)}" if drifted else "")
    )
    brief = _retraining_brief(retraining)
    if brief:
        print(
            f"Retrained: MLflow model '{brief['model_name']}' version {brief['version']}: alias "
            f"{brief['alias'] or 'none (gate refused)'} - {brief['reason']}"
        )
    elif check.get("no_retrain_reason"):
        print(f"Not retrained: {check['no_retrain_reason']}.")
    elif check["decision"] == "retrain" and args.check_only:
        print("Not retrained (--check-only).")
    if report:
        print(f"HTML report: {report}", flush=True)


def _retraining_brief(retraining: dict[str, Any] | None) -> dict[str, Any] | None:
    if not retraining:
        return None
    reg = retraining["registration"]
    return {
        "model_name": reg["model_name"],
        "version": reg["version"],
        "alias": reg["alias"],
        "reason": reg["reason"],
        "deployment": retraining.get("deployment"),
    }


def _keep_report(home: Path, summary: dict[str, Any]) -> Path | None:
    """The check's HTML report, copied out of the pipeline root to a stable, browsable name."""
    found = Path(summary["check"].get("report_path") or "")
    if not found.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(summary["check"]["checked_at"]))
    target = home / "reports" / f"drift-{stamp}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found, target)
    return target
