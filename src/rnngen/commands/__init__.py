"""The `rnngen` subcommands, each with its options beside the handler that reads them.

- :mod:`~rnngen.commands.options` — the argparse value types and the shared ``--params`` /
  ``--model`` every command is built with (no torch: ``rnngen --help`` stays quick).
- :mod:`~rnngen.commands.settings` — what the commands take from params.yaml, and the model
  ``--model`` names.
- :mod:`~rnngen.commands.images` — ``--image`` / ``--test-index``: the images a command works on.
- :mod:`~rnngen.commands.model_use` — sample, inpaint, score, interpolate, evaluate.
- :mod:`~rnngen.commands.admin` — promote, info, server: the registry and the team's servers.

:mod:`rnngen.cli` assembles them into one parser.
"""
