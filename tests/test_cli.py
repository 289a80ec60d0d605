import subprocess
import sys

from usad_upstream.cli import main


def test_init_then_info(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    assert main(["init", "--size", "tiny", "--seed", "3", "-o", str(path)]) == 0
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"dim": 192' in out and "parameters: 2,567,744" in out


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "usad_upstream.cli", "info", str(tmp_path / "missing.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("usad info: error: checkpoint not found")
    assert "Traceback" not in result.stderr
