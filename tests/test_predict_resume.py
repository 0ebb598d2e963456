"""medsft.predict / inference.py resume only a predictions file of this stage, split and run: a file of something
else, changed references or sampling settings, a symlink and colliding --modes names are refused with one message;
a malformed row is predicted again, never a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_script
from oracles import assert_exit, lines_naming, raises_naming

from medsft.files import MedsftError

QUESTIONS = ["头痛三天怎么办？", "高血压饮食注意什么？", "失眠怎么办？", "胃痛能喝牛奶吗？"]
GREEDY = dict(max_new_tokens=4, do_sample=False, progress=False)


def write_split(path: Path, answers=None) -> Path:
    answers = answers or [f"参考回答{i}" for i in range(len(QUESTIONS))]
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "think": f"参考思考{i}", "answer": a},
                                       ensure_ascii=False) + "\n" for i, (q, a) in enumerate(zip(QUESTIONS, answers))),
                    encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A complete greedy predictions file of the split on tiny, with its summary."""
    from medsft.predict import predict_file

    d = tmp_path_factory.mktemp("made")
    predict_file("tiny", write_split(d / "test.jsonl"), d / "p.jsonl", **GREEDY)
    return d


def partial(made: Path, d: Path, n: int, edit=None) -> Path:
    """The first ``n`` rows of the made file (``edit(rows)`` applied) with its summary, as an interrupted run leaves."""
    rows = read_rows(made / "p.jsonl")[:n]
    if edit:
        edit(rows)
    write_rows(d / "p.jsonl", rows)
    shutil.copyfile(made / "p.summary.json", d / "p.summary.json")
    return d / "p.jsonl"


@pytest.fixture
def loads(monkeypatch):
    """A stand-in backend (no model): the list of its loads."""
    import medsft.predict as P

    calls = []

    def load_backend(backend, model, adapter_dir, *, max_new_tokens, do_sample, **kw):
        calls.append(model)

        def run(questions, on_batch, modes=None):
            for i, _ in enumerate(questions):
                on_batch([(i, {"output": "<think>\n想\n</think>\n\n答", "new_tokens": 5, "finished": True})])

        return {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": None, "top_p": None,
                "top_k": None}, run

    monkeypatch.setattr(P, "load_backend", load_backend)
    return calls


@pytest.mark.parametrize("kind", ["split copy", "readme", "truncated only"])
def test_a_file_holding_no_prediction_rows_is_refused_and_kept(made, tmp_path, kind):
    out = tmp_path / ("readme.txt" if kind == "readme" else "p.jsonl")
    content = {"split copy": (made / "test.jsonl").read_bytes(), "readme": "读我：实验记录\n第二行\n".encode(),
               "truncated only": (made / "p.jsonl").read_bytes()[:40]}[kind]
    out.write_bytes(content)
    proc = run_script("inference.py", "--model_dir=tiny", f"--input={made / 'test.jsonl'}", f"--output={out}",
                      "--max_new_tokens=4", "--do_sample=false", check=False)
    assert_exit(proc, 1, f"{out}:1", "--output")  # the file and its first line; the way out
    assert len(lines_naming(proc.stdout + proc.stderr, out)) == 1  # one message, no warning per line
    assert out.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_an_empty_file_is_predicted_into(made, tmp_path, loads):
    from medsft.predict import predict_file

    out = tmp_path / "p.jsonl"
    out.write_text("\n", encoding="utf-8")
    assert predict_file("tiny", made / "test.jsonl", out, **GREEDY)["n"] == len(QUESTIONS) and loads == ["tiny"]


def test_resume_compares_the_sampling_settings_generation_used(tmp_path):
    """A file sampled at --temperature=1.5 is not continued (or reused) at the model's default, and a file made at
    the default resumes when that same value is asked for by name."""
    from medsft.models import load_model
    from medsft.predict import predict_file, summary_path

    split = write_split(tmp_path / "test.jsonl")
    hot = tmp_path / "hot.jsonl"
    predict_file("tiny", split, hot, max_new_tokens=2, temperature=1.5, progress=False)
    complete = hot.read_bytes()
    with raises_naming(MedsftError, hot, "temperature=1.5", "--output"):  # complete: not reused as if made at 0.6
        predict_file("tiny", split, hot, max_new_tokens=2, progress=False)
    hot.write_bytes(b"".join(complete.splitlines(keepends=True)[:1]))
    kept = hot.read_bytes(), summary_path(hot).read_bytes()
    with raises_naming(MedsftError, hot, "temperature=1.5", "--output"):  # partial: not continued at 0.6
        predict_file("tiny", split, hot, max_new_tokens=2, progress=False)
    assert (hot.read_bytes(), summary_path(hot).read_bytes()) == kept

    default = tmp_path / "default.jsonl"
    predict_file("tiny", split, default, max_new_tokens=2, progress=False)
    default.write_bytes(b"".join(default.read_bytes().splitlines(keepends=True)[:1]))
    gc = load_model("tiny").generation_config
    summary = predict_file("tiny", split, default, max_new_tokens=2, temperature=gc.temperature, top_k=gc.top_k,
                           progress=False)
    assert summary["n_resumed"] == 1 and summary["n"] == len(QUESTIONS)


def test_resume_refuses_a_split_whose_references_changed(made, tmp_path):
    from medsft.predict import predict_file

    out = partial(made, tmp_path, 3)
    before = out.read_bytes()
    edited = write_split(tmp_path / "test.jsonl", ["参考回答0", "改过的参考回答", "参考回答2", "参考回答3"])
    with raises_naming(MedsftError, f"{out}:2:", "'q1'", "ref_answer", "--output"):  # first row that differs
        predict_file("tiny", edited, out, **GREEDY)
    assert out.read_bytes() == before


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_symlinked_output_is_refused(made, tmp_path, loads, target_exists):
    from medsft.predict import predict_file

    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "p.jsonl"
    if target_exists:
        partial(made, tmp_path / "store", 2)
    link = tmp_path / "link.jsonl"
    link.symlink_to(Path("store") / "p.jsonl")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with raises_naming(MedsftError, f"--output={link}", target.resolve()):  # the link and the real path to pass
        predict_file("tiny", made / "test.jsonl", link, **GREEDY)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.rglob("*")) == before and loads == []


def test_modes_with_an_output_named_for_another_mode_are_refused_up_front(made, tmp_path):
    out = tmp_path / "p.no_think_soft.jsonl"
    proc = run_script("inference.py", "--model_dir=tiny", f"--input={made / 'test.jsonl'}", f"--output={out}",
                      "--modes=think,no_think_soft", "--max_new_tokens=4", "--do_sample=false", check=False)
    assert_exit(proc, 1, f"--output={out}", "--modes", tmp_path / "p.jsonl")  # the clash and the name to pass
    assert not list(tmp_path.iterdir()) and "loading" not in proc.stdout


def test_modes_files_keep_their_names(tmp_path):
    from medsft.predict import mode_runs

    assert mode_runs("think,no_think_hard", True, "", tmp_path / "p.jsonl") == [(True, ""), (False, "")]
    assert mode_runs("no_think_soft", True, "", tmp_path / "p.no_think_soft.jsonl") == [(True, "/no_think")]
    assert mode_runs("", True, "/no_think", tmp_path / "p.no_think_soft.jsonl") == [(True, "/no_think")]


def _set(**fields):
    return lambda rows: rows[1].update(fields)


@pytest.mark.parametrize("field, edit", [("id", _set(id=[1])), ("id", _set(id={"a": 1})),
                                         ("new_tokens", _set(new_tokens="eight")),
                                         ("think_status", _set(think_status=["closed"]))])
def test_a_malformed_row_is_predicted_again(made, tmp_path, loads, capsys, field, edit):
    from medsft.predict import predict_file

    out = partial(made, tmp_path, 3, edit)
    summary = predict_file("tiny", made / "test.jsonl", out, **GREEDY)
    assert (summary["n"], summary["n_resumed"]) == (len(QUESTIONS), 2) and loads == ["tiny"]
    assert [r["id"] for r in read_rows(out)] == [f"q{i}" for i in range(len(QUESTIONS))]
    assert lines_naming(capsys.readouterr().out, f"{out}:2:", field)  # the warning names the row and its field


def test_a_row_of_another_split_without_a_question_is_refused(made, tmp_path, loads):
    from medsft.predict import predict_file

    def edit(rows):
        rows[1]["id"] = "zzz"
        del rows[1]["question"]

    out = partial(made, tmp_path, 3, edit)
    before = out.read_bytes()
    with raises_naming(MedsftError, f"{out}:2:", "'zzz'", "--output"):
        predict_file("tiny", made / "test.jsonl", out, **GREEDY)
    assert out.read_bytes() == before and loads == []


def test_a_summary_that_is_not_an_object_is_unreadable(made, tmp_path, loads):
    from medsft.predict import predict_file, summary_path

    out = partial(made, tmp_path, 2)
    summary_path(out).write_text("[]", encoding="utf-8")
    with raises_naming(MedsftError, out, summary_path(out).name, "--output"):
        predict_file("tiny", made / "test.jsonl", out, **GREEDY)
    assert loads == [] and summary_path(out).read_text(encoding="utf-8") == "[]"
