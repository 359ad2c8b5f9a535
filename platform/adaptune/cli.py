"""The `adaptune` command line: parses arguments, calls one function per verb, maps errors to exit codes.
No logic lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from adaptune.console import LOG_FORMAT, console
from adaptune.demo.build import build_demo_model
from adaptune.driver.report import format_retrain, format_sweep, format_trial
from adaptune.driver.run import past_sweep, plan_run, run_merge, run_sweep, run_train, ui_target
from adaptune.errors import EXIT_INVALID, EXIT_OK, EXIT_RUNTIME, UserInputError
from adaptune.names import MODEL_CONFIG
from adaptune.preflight.reference import config_reference
from adaptune.preflight.search_space import finite_values
from adaptune.redaction import install_log_redaction, redact
from adaptune.retrain.round import RetrainBusy, run_retrain, run_rollback
from adaptune.tracking.server import tracking_uri

log = logging.getLogger("adaptune")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--cluster", help="cluster profile (default: this machine, local Ray)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override a sweep key (lora.r=16) or, prefixed with cluster., a profile key",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptune",
        description="Distributed LoRA/QLoRA hyperparameter search and training on Ray, DeepSpeed and MLflow.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of runtime failures")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's, DeepSpeed's and the libraries' output live (it always goes to the run's log file)",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_run_args(sub.add_parser("validate", help="check a sweep file and cluster profile without running anything"))
    _add_run_args(sub.add_parser("train", help="train the sweep's base values as one trial and print its metrics"))
    sweep = sub.add_parser("sweep", help="search the sweep's space with Ray Tune, many trials, and name a winner")
    _add_run_args(sweep)
    sweep.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="SWEEP_ID",
        help="continue an interrupted sweep (the newest, or SWEEP_ID) from its storage path",
    )
    demo = sub.add_parser("demo-model", help="build the offline demo base model from the demo company data")
    demo.add_argument("--out", default="demo-model", help="output directory (default: demo-model)")
    demo.add_argument("--data", default="data/demo/company_faq.jsonl", help="corpus for its tokenizer")
    demo.add_argument("--force", action="store_true", help="rebuild even if the directory has a model")
    merge = sub.add_parser(
        "merge", help="merge an adapter from the registry (NAME@ALIAS, NAME/VERSION) or a trial run into its base model"
    )
    merge.add_argument("ref", help="e.g. mymodel@champion, mymodel/3, or a trial's MLflow run id")
    merge.add_argument("--out", required=True, help="directory for the merged model (safetensors + tokenizer)")
    merge.add_argument("--cluster", help="cluster profile whose mlflow.tracking_uri to use")
    merge.add_argument("--tracking-uri", help="MLflow tracking URI (default: profile, MLFLOW_TRACKING_URI, embedded)")
    merge.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    merge.add_argument("--no-register", action="store_true", help="do not log and register the merged model")
    merge.add_argument(
        "overrides", nargs="*", metavar="cluster.key=value", help="override a profile key (cluster.storage_path=...)"
    )
    retrain = sub.add_parser(
        "retrain",
        help="retrain on a new data drop: a sweep warm-started from the champion, promoted only if better on the "
        "frozen evaluation set",
    )
    _add_run_args(retrain)
    retrain.add_argument("--data", required=True, help="the new drop: a file, glob or directory of company data")
    retrain.add_argument(
        "--newest-drop",
        action="store_true",
        help="--data is a folder of dated drops (2026-11-22/, ...): retrain on the newest one",
    )
    rollback = sub.add_parser("rollback", help="move a registered model's champion back to its previous champion")
    rollback.add_argument("name", help="the registered model, e.g. support-bot")
    rollback.add_argument("--cluster", help="cluster profile whose storage_path and mlflow.tracking_uri to use")
    rollback.add_argument("--tracking-uri", help="MLflow tracking URI (default: profile, MLFLOW_TRACKING_URI)")
    rollback.add_argument("--reason", default="", help="why, recorded on the rollback run in MLflow")
    rollback.add_argument(
        "overrides", nargs="*", metavar="cluster.key=value", help="override a profile key (cluster.storage_path=...)"
    )
    results = sub.add_parser("results", help="print the results table and the winner of a past sweep")
    results.add_argument(
        "sweep",
        nargs="?",
        metavar="SWEEP",
        help="a sweep id (sweep-20261203-101500), a sweep file (its newest sweep) or a sweep's directory; "
        "default: the newest sweep under the profile's storage path",
    )
    results.add_argument("--cluster", help="cluster profile whose storage_path to read")
    results.add_argument(
        "overrides", nargs="*", metavar="cluster.key=value", help="override a profile key (cluster.storage_path=...)"
    )
    ui = sub.add_parser("ui", help="open the MLflow UI on the store the configs point at")
    ui.add_argument("store", nargs="?", metavar="STORAGE_PATH", help="the storage folder of an embedded store")
    ui.add_argument("--cluster", help="cluster profile whose storage_path and mlflow.tracking_uri to use")
    ui.add_argument("--tracking-uri", help="MLflow tracking URI (default: profile, MLFLOW_TRACKING_URI, embedded)")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port the UI listens on (default: 5000)")
    ui.add_argument(
        "overrides", nargs="*", metavar="cluster.key=value", help="override a profile key (cluster.storage_path=...)"
    )
    sub.add_parser("config-reference", help="print the configuration reference (Markdown) from the schema")
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:

    plan = plan_run(args.sweep, args.cluster, args.overrides)
    searched = finite_values(plan.sweep.search.space, "quantization.mode")
    modes = "/".join(dict.fromkeys(map(str, searched))) + " (searched)" if searched else plan.sweep.quantization.mode
    _say(
        f"{args.sweep}: ok ({plan.sweep.name}: {plan.cluster.trial.num_workers} workers per trial, "
        f"ZeRO-{plan.cluster.deepspeed.zero_stage}, quantization {modes}; "
        f"MLflow {tracking_uri(plan.cluster)})"
    )
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:

    result = run_train(args.sweep, args.cluster, args.overrides)
    _say(format_trial(result.manifest, result.outcome))
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:

    outcome = run_sweep(args.sweep, args.cluster, args.overrides, resume=args.resume)
    _say(format_sweep(outcome))
    if outcome.interrupted:
        again = " ".join(
            [
                "adaptune sweep",
                args.sweep,
                *(["--cluster", args.cluster] if args.cluster else []),
                "--resume",
                outcome.sweep_id,
                *args.overrides,
            ]
        )
        _say(f"adaptune: sweep stopped before the end, its state is saved; resume with: {again}", err=True)
        return 130
    return EXIT_OK if outcome.winner else EXIT_RUNTIME  # a sweep whose trials all failed is a failure


def _cmd_merge(args: argparse.Namespace) -> int:

    merged = run_merge(
        args.ref, args.out, args.cluster, args.tracking_uri, args.overrides, args.overwrite, not args.no_register
    )
    adapter, report, registration = merged.adapter, merged.report, merged.registration
    source = f"{adapter.name} version {adapter.version}" if adapter.version else f"run {adapter.run_id}"
    _say(f"merged   {args.ref} ({source}) into its base model -> {report.out_dir}")
    _say(
        f"check    {report.prompts} sample prompts: largest logit difference between the merged model and "
        f"base+adapter {report.max_abs_diff:.3g} (tolerance {report.tolerance:g})"
    )
    if registration is not None:
        _say(f"registry {registration.name} version {registration.version}")
    _say(f"ui       {merged.ui}")
    return EXIT_OK


def _cmd_retrain(args: argparse.Namespace) -> int:

    try:
        outcome = run_retrain(args.sweep, args.cluster, args.data, args.overrides, newest=args.newest_drop)
    except RetrainBusy as e:
        _say(f"adaptune: retrain refused: {e}", err=True)
        return EXIT_RUNTIME
    if outcome.sweep is not None:
        _say(format_sweep(outcome.sweep))
    _say(format_retrain(outcome))
    return outcome.exit_code


def _cmd_rollback(args: argparse.Namespace) -> int:

    try:
        done = run_rollback(args.name, args.cluster, args.tracking_uri, args.overrides, args.reason)
    except RetrainBusy as e:
        _say(f"adaptune: rollback refused: {e}", err=True)
        return EXIT_RUNTIME
    _say(
        f"rollback {args.name}: @champion {done.demoted} -> {done.restored}; version {done.demoted} keeps @rolled-back"
    )
    _say(f"mlflow   rollback run {done.run_id} at {done.uri}")
    return EXIT_OK


def _optional_first(value: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """An optional positional argparse filled with the first `key=value` override: give it back."""
    if value is not None and "=" in value:
        return None, [value, *overrides]
    return value, overrides


def _cmd_results(args: argparse.Namespace) -> int:

    sweep, overrides = _optional_first(args.sweep, args.overrides)
    _say(format_sweep(past_sweep(sweep, args.cluster, overrides)))
    return EXIT_OK


def _cmd_ui(args: argparse.Namespace) -> int:

    store, overrides = _optional_first(args.store, args.overrides)
    target = ui_target(store, args.cluster, args.tracking_uri, overrides, args.host, args.port)
    if target.command is None:
        _say(f"MLflow UI: open {target.url} in a browser (the tracking server the configs point at)")
        return EXIT_OK
    _say(f"MLflow UI on {target.uri} at {target.url} (Ctrl-C stops it)")
    sys.stdout.flush()
    os.execv(target.command[0], target.command)  # the UI in this process, so Ctrl-C and exit codes are its own
    return EXIT_RUNTIME  # not reached


def _cmd_demo_model(args: argparse.Namespace) -> int:

    out = Path(args.out)
    if (out / MODEL_CONFIG).is_file() and not args.force:
        _say(f"demo model already at {out} (use --force to rebuild)")
        return EXIT_OK
    console.capture(out.resolve() / "build.log")  # the tokenizer trainer's, transformers' and DeepSpeed's output
    with console.task(f"demo model: building {out}"):
        build_demo_model(out, Path(args.data))
    _say(f"demo model written to {out}")
    return EXIT_OK


def _cmd_config_reference(_: argparse.Namespace) -> int:

    print(config_reference(), end="")  # the schema: nothing to mask
    return EXIT_OK


COMMANDS = {
    "validate": _cmd_validate,
    "train": _cmd_train,
    "sweep": _cmd_sweep,
    "merge": _cmd_merge,
    "retrain": _cmd_retrain,
    "rollback": _cmd_rollback,
    "results": _cmd_results,
    "ui": _cmd_ui,
    "demo-model": _cmd_demo_model,
    "config-reference": _cmd_config_reference,
}


def main(argv: list[str] | None = None) -> int:
    """Run one verb; 0 ok, 2 invalid config or data, 1 runtime failure."""
    parser = _parser()
    # Overrides may come before or after --cluster; argparse leaves the later ones unparsed. Either way a word
    # that is not `key=value` is reported by the override parser, naming it.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    console.verbose = args.verbose
    install_log_redaction()  # whichever library logs a URI or a message holding a secret
    try:
        return COMMANDS[args.verb](args)
    except UserInputError as e:
        for problem in e.problems:
            _say(str(problem), err=True)
        return EXIT_INVALID
    except KeyboardInterrupt:
        _say("adaptune: interrupted", err=True)
        return 130
    except Exception as e:  # a runtime failure: one line, the traceback only on request
        cause = _user_error_inside(e)
        if cause is not None:
            for problem in cause.problems:
                _say(str(problem), err=True)
            return EXIT_INVALID
        if args.debug:
            _say(traceback.format_exc().rstrip(), err=True)
        _say(f"adaptune: {args.verb} failed: {_root_message(e)} (run with --debug for the traceback)", err=True)
        return EXIT_RUNTIME


def _say(text: str, err: bool = False) -> None:
    """Print a line for the user with any secret in it masked (a URI's password, a credential's value)."""
    console.say(redact(text), err=err)


def _user_error_inside(e: BaseException) -> UserInputError | None:
    """A user error raised in a Ray worker arrives wrapped; find it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserInputError):
            return e
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)
    return None


def _root_message(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
