"""Command-line options of the app, shared by ``python app.py`` and ``lorashear app`` (no Dash import here,
so the CLI stays fast for every other command)."""
from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="a local Hugging Face model directory (default: the shipped "
                                                    "demo model)")
    src.add_argument("--config", metavar="FILE", help="a model config .json; use with --meta to browse a big "
                                                      "model's structure without weights")
    p.add_argument("--meta", action="store_true", help="trace on the meta device: structure only, no weights")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only; any other needs "
                                                        "an access token: generated and printed, or --token)")
    p.add_argument("--token", default=os.environ.get("LORASHEAR_TOKEN"), metavar="TOKEN",
                   help="access token every request must carry (default: $LORASHEAR_TOKEN; beyond loopback one is "
                        "generated and printed once when not given)")
    p.add_argument("--queue", default=os.environ.get("LORASHEAR_QUEUE"), metavar="redis://[:PASSWORD@]HOST:PORT/DB",
                   help="run jobs on a Celery worker pool ('lorashear worker') instead of local processes "
                        "(default: $LORASHEAR_QUEUE; docs/scale.md)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--runs", metavar="DIR", default=None,
                   help="where the job registry and job outputs live (default: $LORASHEAR_RUNS or ./runs)")
    p.add_argument("--cap", type=int, default=1000, help="most graph nodes shown at once (default 1000)")
    p.add_argument("--retrace", action="store_true", help="trace again even if a graph job for this model exists")
    p.add_argument("--debug", action="store_true", help="Dash debug mode (dev tools, reloader off)")
