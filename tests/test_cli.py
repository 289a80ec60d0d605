import subprocess
import sys

from downstream_recipes.cli import main


def test_init_then_info(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    assert main(["init", "--size", "tiny", "--seed", "3", "-o", str(path)]) == 0
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"dim": 192' in out and "parameters: 2,567,744" in out


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "downstream_recipes.cli", "info", str(tmp_path / "missing.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("usad info: error: checkpoint not found")
    assert "Traceback" not in result.stderr


def test_bad_distill_configs_and_export_inputs_are_named_errors(tmp_path, capsys):
    """Each mistake gets one line naming the file or the field and what was expected."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  lr: [1\n")
    binary = tmp_path / "random.pt"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    not_ckpt = tmp_path / "notes.wav"
    not_ckpt.write_text("not audio and not a checkpoint")
    run = f"run_dir={tmp_path / 'run'}"
    cases = [
        (["distill", "--config", str(bad_yaml)], f"{bad_yaml}: not a readable YAML config"),
        (["distill", "--config", str(binary)], f"{binary}: not a readable YAML config"),
        (["distill", "--config", "tiny", run, "train.lr=fast"], "train.lr must be a number > 0, got 'fast'"),
        (["distill", "--config", "tiny", run, "train.batch_seconds=big"], "train.batch_seconds must be a number > 0"),
        (["distill", "--config", "tiny", run, "train.betas=[1, 2]"], "train.betas must be two numbers in [0, 1)"),
        (["export", str(not_ckpt), "-o", str(tmp_path / "x.safetensors")], f"{not_ckpt}: not a `usad distill` checkpoint"),
        (["export", str(binary), "-o", str(tmp_path / "x.safetensors")], f"{binary}: not a `usad distill` checkpoint"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "run").exists()  # a refused config leaves no run directory behind


def test_exponent_numbers_in_configs_and_overrides_are_numbers(tmp_path):
    """README writes train.lr=5e-4; plain PyYAML would hand the optimizer the string '5e-4'."""
    from usad_upstream.distill.config import load_config

    assert load_config("tiny", ["train.lr=5e-4"])["train"]["lr"] == 5e-4
    path = tmp_path / "mine.yaml"
    path.write_text("model: {size: tiny}\nteachers: {t: {kind: usad, path: x}}\ntrain: {lr: 2e-3, eps: 1E-8}\n")
    train = load_config(str(path))["train"]
    assert (train["lr"], train["eps"]) == (2e-3, 1e-8)
