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


def test_bad_model_paths_exit_2_with_a_message(tmp_path, capsys):
    from viz.app import main

    assert main(["--model", str(tmp_path / "nope"), "--runs", str(tmp_path / "runs")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the script itself, as a user runs it
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--config", str(ROOT / "configs" / "llama-2-7b.json"),
                        "--runs", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "add --meta" in r.stderr and "Traceback" not in r.stderr, r.stderr
