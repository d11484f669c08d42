import pytest

from configurator import ConfigError, configure


def _globals():
    return {"lr": 1e-5, "steps": 10, "name": "run", "use_wandb": False, "server_urls": ["a"],
            "summarizer_url": None, "_private": 1}


def test_cli_overrides_and_types(tmp_path):
    g = _globals()
    cfg = configure(g, ["--lr=3e-4", "--steps=20", "--name=out/run1", "--use_wandb=True",
                        "--server_urls=['x','y']", "--summarizer_url=http://h:1/v1"])
    assert g["lr"] == 3e-4 and g["steps"] == 20 and g["name"] == "out/run1" and g["use_wandb"] is True
    assert g["server_urls"] == ["x", "y"] and g["summarizer_url"] == "http://h:1/v1"
    assert "_private" not in cfg and cfg["steps"] == 20


def test_int_for_float_and_numeric_string():
    g = _globals()
    configure(g, ["--lr=1", "--name=123"])
    assert g["lr"] == 1.0 and isinstance(g["lr"], float)
    assert g["name"] == "123"


def test_config_file_then_cli(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nsteps = 7\nlr = 2e-6\n")
    g = _globals()
    configure(g, [str(f), "--steps=9"])
    assert g["steps"] == 9 and g["lr"] == 2e-6


@pytest.mark.parametrize("argv,needle", [
    (["--stpes=3"], "stpes"),
    (["--steps=8.5"], "steps"),
    (["--use_wandb=1"], "use_wandb"),
    (["--steps"], "--steps"),
])
def test_errors_name_the_key(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        configure(_globals(), argv)


def test_config_file_errors_name_file_and_key(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("stepz = 3\n")
    with pytest.raises(ConfigError, match=r"bad.py.*stepz"):
        configure(_globals(), [str(f)])
    f.write_text("steps = (\n")
    with pytest.raises(ConfigError, match="bad.py"):
        configure(_globals(), [str(f)])
    with pytest.raises(ConfigError, match="missing.py"):
        configure(_globals(), [str(tmp_path / "missing.py")])


def test_config_keys_is_sorted_plain_values():
    from configurator import config_keys
    import math
    g = {**_globals(), "math": math, "f": len, "T": tuple}
    assert config_keys(g) == sorted(k for k in _globals() if not k.startswith("_"))


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    # a real stage script from the command line: one line on stderr, status 2, no traceback
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for argv, line in ((["--bogus=1"], "sft.py: unknown config key 'bogus'"),
                       (["--batch_size=8.5"], "sft.py: config key 'batch_size'")):
        r = subprocess.run([sys.executable, str(root / "sft.py"), *argv], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().startswith(line) and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
