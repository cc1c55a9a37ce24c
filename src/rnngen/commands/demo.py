"""`rnngen demo`: the model on a web page, for people (Gradio; :mod:`rnngen.demo_page`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rnngen import layout
from rnngen.commands.options import add_command, positive_int
from rnngen.commands.settings import defaults
from rnngen.errors import UserError


def add_demo(sub: Any) -> None:
    command = add_command(sub, "demo", "a web page to draw, repair, judge and walk between digits with a model "
                          "(Gradio, on 127.0.0.1:7860 until Ctrl-C)", """\
  rnngen demo                                     # the champion, models:/rnngen@champion
  rnngen demo --model models:/rnngen/3 --port 7861
  rnngen demo --host 0.0.0.0                      # others may reach it: they log in as rnngen

The page calls what `rnngen sample`, `inpaint`, `score` and `interpolate` call, so a seed gives
the same digits on the page as on the command line. Judge places an image's NLL among --reference
test digits of --split, scored once at start-up. The page listens on 127.0.0.1; on any other
--host it asks for a login (user rnngen, its password generated into --password-file, 0600).
Needs pip install -e '.[demo]'.""", _demo, model=True)
    option = command.add_argument
    option("--host", default="127.0.0.1",
           help="interface to listen on (default: %(default)s; another asks for a login)")
    option("--port", type=int, default=7860, help="port (default: %(default)s)")
    option("--split", type=Path, default=layout.SPLIT,
           help="split stage output: its test digits give Judge's percentile (default: %(default)s)")
    option("--reference", type=positive_int, default=500,
           help="test digits scored for the percentile (default: %(default)s)")
    option("--password-file", type=Path, default=Path(".rnngen-demo/password"),
           help="the login's password with a --host beyond loopback, generated the first time "
                "(default: %(default)s)")


def _demo(args: argparse.Namespace) -> None:
    try:
        from rnngen import demo_page
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise UserError("the demo needs Gradio: pip install -e '.[demo]' (or run `make demo`)") from None
    from rnngen import demo

    login = demo_page.login_for(args.host, args.password_file)  # before the slow part: a bad file fails fast
    settings = defaults(args.params)
    served = demo.load_served(args.model or settings.model_uri, settings.model_name, args.split, args.reference)
    where = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"rnngen demo: {served.source} on {where}" +
          (f" (login {login[0]}, password in {args.password_file})" if login else "") + "; Ctrl-C stops", flush=True)
    demo_page.launch(served, args.host, args.port, login)
