"""Constants-block overrides: typing, --help, unknown names, saved config."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
from oracles import assert_exit

from medsft.config import parse_value, read_constants, save_config, script_defaults

SCRIPT = textwrap.dedent('''\
    """Demo stage. Reads nothing."""
    import json, sys
    sys.path.insert(0, {root!r})
    from medsft.config import configure
    MODEL = "Qwen/Qwen3-1.7B"  # model spec
    EPOCHS = 2  # passes over the data
    LEARNING_RATE = 1e-4  # peak learning rate
    RESUME = False  # continue from the newest checkpoint
    MAX_SAMPLES = None  # rows to use (None = all)
    TARGETS = ["q_proj", "v_proj"]  # LoRA target modules
    RUN_NAME = "run"  # display name

    def main():
        print(json.dumps(configure(globals())))

    if __name__ == "__main__":
        main()
    ''')


@pytest.fixture
def script(tmp_path, root):
    p = tmp_path / "stage.py"
    p.write_text(SCRIPT.format(root=str(root)))
    return p


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)


def test_overrides_are_typed_like_defaults(script):
    p = run(script, "--epochs=3", "--learning_rate=2e-5", "--resume=true", "--max_samples=10",
            "--targets=a,b", "--run_name=")
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg == {"MODEL": "Qwen/Qwen3-1.7B", "EPOCHS": 3, "LEARNING_RATE": 2e-5, "RESUME": True,
                   "MAX_SAMPLES": 10, "TARGETS": ["a", "b"], "RUN_NAME": ""}


@pytest.mark.parametrize("text,expected", [("true", True), ("1", True), ("FALSE", False), ("0", False)])
def test_bool_values(text, expected):
    assert parse_value("RESUME", text, False) is expected


def test_none_and_bare_flag(script):
    cfg = json.loads(run(script, "--model=None", "--resume").stdout)
    assert cfg["MODEL"] is None and cfg["RESUME"] is True


def test_unknown_name_lists_valid_ones(script):
    p = run(script, "--epoch=3")
    msg = assert_exit(p, 2, "--epochs", "--learning_rate", "--resume")  # the valid names ...
    assert re.search(r"--epoch(?!s)", msg), msg  # ... and the one given


@pytest.mark.parametrize("arg,facts", [(["--epochs=two"], ["--epochs=two", "int"]),  # the value, the type expected
                                       (["--resume=maybe"], ["--resume=maybe", "true", "false"]),
                                       (["epochs=3"], ["'epochs=3'", "--epochs"]),  # and the options it may mean
                                       (["--epochs"], ["--epochs="])])  # the form that gives it a value
def test_malformed_values_are_clear_errors(script, arg, facts):
    assert_exit(run(script, *arg), 2, *facts)


def test_help_prints_constants_defaults_and_comments(script):
    p = run(script, "--help")
    assert p.returncode == 0
    assert "Demo stage" in p.stdout
    assert "--learning_rate" in p.stdout and "0.0001" in p.stdout and "peak learning rate" in p.stdout


def test_read_constants_and_literal_defaults(script):
    consts = read_constants(script.read_text())
    assert [n for n, _ in consts] == ["MODEL", "EPOCHS", "LEARNING_RATE", "RESUME", "MAX_SAMPLES", "TARGETS",
                                      "RUN_NAME"]
    assert dict(consts)["EPOCHS"] == "passes over the data"
    assert script_defaults(script)["TARGETS"] == ["q_proj", "v_proj"]


def test_save_config_roundtrip(tmp_path):
    path = save_config({"A": 1, "B": ("x", "y"), "C": "中文"}, tmp_path / "sub" / "cfg.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"A": 1, "B": ["x", "y"], "C": "中文"}
    assert not [p for p in path.parent.iterdir() if p.name != "cfg.json"]  # no temp files left behind


def test_a_run_s_config_is_the_script_s_constants_read_only_then_what_the_run_derives():
    from pathlib import Path

    from medsft.config import Config

    root = Path(__file__).resolve().parents[1]
    for script in ("train.py", "train_lora.py", "train_grpo.py"):
        defaults = script_defaults(root / script)
        assert dict(Config(defaults)) == defaults, script  # no second copy of any default
    cfg = Config({"MODEL": "tiny", "SEED": 1, "ENGINE": "auto"})
    derived = cfg.replace(ENGINE="single", DEEPSPEED=None, WORLD_SIZE=1)
    assert list(derived) == ["MODEL", "SEED", "ENGINE", "DEEPSPEED", "WORLD_SIZE"]  # train_config.json's order
    assert derived.engine == "single" and cfg.engine == "auto" and derived["SEED"] == cfg.seed == 1
    with pytest.raises(AttributeError):
        cfg.seed = 2
    with pytest.raises(AttributeError, match="LORA_R"):
        cfg.lora_r  # noqa: B018 - a constant the script does not have is an error, not a hidden default
