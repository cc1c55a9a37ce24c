"""The registry and the team's servers: promote, info, server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rnngen import layout
from rnngen.commands.options import add_command, tolerance_arg
from rnngen.commands.settings import defaults, with_flags


def add_promote(sub: Any) -> None:
    command = add_command(sub, "promote", "compare the model `dvc repro` just registered with the champion and "
                          "move the alias only if it wins; writes a markdown report and tags the model version", """\
  rnngen promote                                  # after dvc repro: models/run.json + reports/metrics.json
  rnngen promote --margin 1.0 --tolerance test_nll_elbo=0.5
  rnngen promote --version 3 --force              # roll back: make version 3 the champion

  rnngen promote --primary test_fcd               # a GAN (no likelihood) against any model

The rule (params.yaml `promote:`): the challenger's test_nll_iwae must be lower than the
champion's by at least --margin nats, and no other listed metric may be worse by more than its
tolerance. The first model becomes champion. A GAN has no likelihood: with an NLL primary,
promotion between it and any model is refused; rank by a metric both have (--primary test_fcd).
This changes the registry, so it is not a DVC stage.
""", _promote)
    option = command.add_argument
    option("--run-json", type=Path, default=layout.RUN_JSON, help="train stage record (default: %(default)s)")
    option("--metrics", type=Path, default=layout.METRICS_JSON,
           help="evaluate stage metrics (default: %(default)s)")
    option("--report", type=Path, default=layout.PROMOTION_REPORT,
           help="markdown report to write (default: %(default)s)")
    option("--split", type=Path, default=layout.SPLIT,
           help="test split for re-scoring a champion evaluated on other data (default: %(default)s)")
    option("--primary", default=None,
           help="the metric the challenger must win on (default: promote.primary); e.g. test_fcd to compare "
                "with a GAN, which has no likelihood")
    option("--margin", type=float, default=None, help="how much the primary metric must improve by (its units)")
    option("--tolerance", type=tolerance_arg, action="append", metavar="METRIC=VALUE",
           help="how much worse METRIC may get (repeatable)")
    option("--alias", default=None, help="alias to move (default: promote.alias)")
    option("--version", default=None, help="challenger version (default: the one in --run-json)")
    option("--name", default=None, help="registered model name, with --version (default: tracking.model_name)")
    option("--force", action="store_true", help="move the alias whatever the metrics say")


def _promote(args: argparse.Namespace) -> None:
    from rnngen import promote

    settings = defaults(args.params)
    tolerances = {**settings.promote.tolerances, **dict(args.tolerance or [])}
    if args.primary:  # the new primary is judged by the margin: its tolerance, if listed, goes
        tolerances.pop(args.primary, None)
    cfg = with_flags(settings.promote, primary=args.primary or None, margin=args.margin, alias=args.alias or None,
                     tolerances=tolerances)
    rescore = None
    if args.split.is_dir():  # re-scores a champion that was evaluated on another test set
        rescore = promote.likelihood_rescorer(args.split, settings.evaluate.batch_size)
    decision = promote.promote(
        cfg, args.report, run_json=args.run_json, metrics_json=args.metrics, version=args.version,
        name=args.name or (None if args.version is None else settings.model_name), rescore=rescore,
        force=args.force, default_name=settings.model_name,
    )
    print(args.report.read_text(), end="")
    print(f"promotion: {decision.outcome} (report: {args.report})", file=sys.stderr)


def add_info(sub: Any) -> None:
    command = add_command(sub, "info", "show which version holds the champion alias and its held-out metrics "
                          "(JSON)", """\
  rnngen info
  rnngen info --name rnngen --alias champion
  MLFLOW_TRACKING_URI=http://mlflow:5000 rnngen info
""", _info)
    option = command.add_argument
    option("--name", default=None, help="registered model name (default: tracking.model_name)")
    option("--alias", default=None, help="alias to look up (default: promote.alias)")


def _info(args: argparse.Namespace) -> None:
    from rnngen import registry

    settings = defaults(args.params)
    info = registry.model_info(args.name or settings.model_name, args.alias or settings.alias)
    print(json.dumps(info, indent=2))


def add_server(sub: Any) -> None:
    command = add_command(sub, "server", "a team's tracking server and tuning database: PostgreSQL + mlflow "
                          "server, both asking for passwords (until Ctrl-C); add a teammate; rotate a password", """\
  rnngen server                                  # start; prints what the pipeline's shell exports
  rnngen server add-user ana --role edit         # a teammate; prints the file that holds her password
  rnngen server passwd ana                       # a new password: admin, a teammate, tuner or rnngen
  rnngen server --dir /srv/rnngen --host 0.0.0.0 --allowed-hosts ml.example.org

PostgreSQL asks every connection for a password (scram-sha-256), MLflow runs its basic-auth app;
passwords are generated into 0600 files in DIR/secrets and never printed. Both listen on 127.0.0.1
unless --host says otherwise. Needs the PostgreSQL server (apt-get install postgresql) and
pip install -e '.[server]'.""", _server, params=False)
    option = command.add_argument
    option("--dir", type=Path, default=Path(".rnngen-server"),
           help="folder of the PostgreSQL cluster, the logs, the artifacts and the secrets (default: %(default)s)")
    option("--port", type=int, default=5000, help="mlflow server port (default: %(default)s)")
    option("--pg-port", type=int, default=5433, help="PostgreSQL port (default: %(default)s)")
    option("--host", default="127.0.0.1",
           help="interface both servers listen on (default: %(default)s; another needs authentication on)")
    option("--allowed-hosts", default="",
           help="comma-separated names clients reach MLflow by, besides loopback (default with --host 0.0.0.0: "
                "this machine's names)")
    option("--no-auth", action="store_true", help="MLflow without its auth app: one person, loopback only")
    actions = command.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add-user", help="a teammate with READ or EDIT on the experiments and the model")
    add.add_argument("name")
    add.add_argument("--role", choices=("read", "edit"), required=True)
    add.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="tracking.experiment and tracking.model_name come from here (default: %(default)s)")
    actions.add_parser("passwd", help="a new password for admin, a teammate, tuner or rnngen").add_argument("name")


def _server(args: argparse.Namespace) -> None:
    from rnngen import team

    if args.action == "add-user":
        from rnngen.config import load_params, section
        from rnngen.tracking import TrackingConfig

        tracking = section(TrackingConfig, load_params(args.params) if args.params.is_file() else {}, "tracking")
        team.add_user(args.dir, args.name, args.role, tracking.experiment, tracking.model_name)
    elif args.action == "passwd":
        team.rotate_password(args.dir, args.name)
    else:
        team.serve(args.dir, args.pg_port, args.port, args.host, auth=not args.no_auth,
                   names=[name for name in args.allowed_hosts.split(",") if name])
