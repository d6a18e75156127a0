"""`lorashear app` / `python app.py`: options parse, and bad input is a one-line error with exit 2."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_app_help_lists_the_model_options():
    from lorashear.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["app", "--config", "configs/llama-2-7b.json", "--meta", "--port", "8099"])
    assert (args.config, args.meta, args.port, args.host) == ("configs/llama-2-7b.json", True, 8099, "127.0.0.1")


def test_bad_model_paths_exit_2_with_a_message(tmp_path):
    for argv, msg in ((["--model", str(tmp_path / "nope")], "does not exist"),
                      (["--config", str(ROOT / "configs" / "llama-2-7b.json")], "add --meta")):
        r = subprocess.run([sys.executable, str(ROOT / "app.py"), *argv, "--runs", str(tmp_path / "runs")],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
