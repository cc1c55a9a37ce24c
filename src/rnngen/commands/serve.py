"""`rnngen serve`: the model over HTTP (``mlflow models serve``, :mod:`rnngen.service`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rnngen import serving
from rnngen.commands.options import add_command, positive_int
from rnngen.commands.settings import defaults
from rnngen.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve(sub: Any) -> None:
    command = add_command(sub, "serve", "serve a model over HTTP: score, sample, inpaint on POST /invocations "
                          "(mlflow models serve, on 127.0.0.1:5001 until Ctrl-C)", """\
  rnngen serve                                    # the champion, models:/rnngen@champion
  rnngen serve --model models:/rnngen/3 --port 5002
  curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
       -d '{"inputs": [], "params": {"task": "sample", "n": 4}}'

The defaults are measured on 2 cores (docs/serving.md): --workers processes share the port, each
with --threads torch threads; a worker that dies is restarted while the others serve. A request
still running after --timeout seconds is answered 504; requests too large to finish well inside it
are refused up front with a 400 that says why.""", _serve, model=True)
    option = command.add_argument
    option("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s; the server has "
                                               "no login: anyone who reaches another interface may use it)")
    option("--port", type=int, default=5001, help="port (default: %(default)s)")
    option("--workers", type=positive_int, default=serving.WORKERS, help="server processes (default: %(default)s)")
    option("--threads", type=positive_int, default=serving.THREADS,
           help="torch threads per worker (default: %(default)s)")
    option("--timeout", type=positive_int, default=serving.TIMEOUT_S,
           help="seconds a request may run (default: %(default)s)")


def _serve(args: argparse.Namespace) -> None:
    from rnngen import tracking

    settings = defaults(args.params)
    uri = args.model or settings.model_uri
    if uri.isdigit():
        uri = f"models:/{settings.model_name}/{uri}"
    if not uri.startswith(("models:/", "runs:/")):
        raise UserError(f"--model {uri}: serve takes a registered model (models:/NAME@ALIAS, models:/NAME/VERSION "
                        "or a version number); a checkpoint file is for rnngen sample, inpaint and score")
    cmd, env = serving.serve_command(uri, args.host, args.port, args.workers, args.threads, args.timeout)
    env = {**os.environ, **env, "MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    where = "" if args.host in LOOPBACK else " (no login: anyone who reaches this interface may use it)"
    print(f"rnngen serve: {uri} on http://{args.host}:{args.port}{where}; {args.workers} worker(s), "
          f"{args.threads} thread(s) each, {args.timeout} s timeout; Ctrl-C stops", flush=True)
    os.execve(cmd[0], cmd, env)
