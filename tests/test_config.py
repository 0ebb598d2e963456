"""Constants-block overrides: typing, --help, unknown names, saved config."""

import json
import subprocess
import sys
import textwrap

import pytest

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
    assert p.returncode == 2
    assert "unknown option --epoch" in p.stderr and "--epochs" in p.stderr and "--learning_rate" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("arg,needle", [("--epochs=two", "expected int"), ("--resume=maybe", "boolean"),
                                        ("epochs=3", "unexpected argument"), ("--epochs", "needs a value")])
def test_malformed_values_are_clear_errors(script, arg, needle):
    p = run(script, arg)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


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


def test_train_config_has_a_field_for_every_training_constant_and_train_py_s_defaults():
    import dataclasses
    from pathlib import Path

    from medsft.config import TrainConfig

    root = Path(__file__).resolve().parents[1]
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for script in ("train.py", "train_lora.py"):
        names = [n for n, _ in read_constants((root / script).read_text(encoding="utf-8"))]
        assert [n for n in names if n.lower() not in fields] == [], script
        assert TrainConfig.of(script_defaults(root / script)).constants() == script_defaults(root / script)
    train = script_defaults(root / "train.py")
    assert {n: fields[n.lower()] for n in train} == train
    with pytest.raises(TypeError, match="NO_SUCH_CONSTANT"):
        TrainConfig.of({"NO_SUCH_CONSTANT": 1})


def test_train_config_json_keeps_the_constants_order_then_the_derived_keys():
    import dataclasses

    from medsft.config import DERIVED, TrainConfig

    cfg = TrainConfig.of({"MODEL": "tiny", "SEED": 1, "ENGINE": "auto"})
    cfg = cfg.replace(engine="single", deepspeed=None, world_size=1, examples_per_step=16, estimated_peak_gib=0.1)
    assert list(cfg.constants()) == ["MODEL", "SEED", "ENGINE", *DERIVED]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 2
