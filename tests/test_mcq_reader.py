"""The one multiple-choice reader (medsft.mcq.extract: benchmark scores and GRPO's reward) on committed, hedged,
rejected, multi-answer and malformed outputs; the paired McNemar comparison of models in the report; how benchmark.py
asks ModelScope for CMMLU (no remote code, a pinned revision). Hand-written rows through `benchmark.py --score`: no
model, no ../shared."""

from __future__ import annotations

import json
import runpy
import sys
import types
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from oracles import raises_naming

from medsft import benchmarks, mcq, rows
from medsft.chat import output_shape
from medsft.files import MedsftError, read_jsonl

# The think mentions every letter and a marker: none of it may ever count
THINK = "<think>\n逐一看：A 卵巢；B 不对；C 也许；答案：D？再想想。\n</think>\n\n"

UNEXTRACTABLE = [  # (output, the letter a loose reader credits)
    (THINK + "患儿维生素D缺乏，导致佝偻病。", "D"),  # a letter inside a medical word
    (THINK + "B超正常，C反应蛋白升高。", "C"),
    (THINK + "D-二聚体升高，提示血栓。", "D"),  # hyphen-joined
    (THINK + "甲肝即A型肝炎。", "A"),
    (THINK + "答案：维生素D", "D"),
    (THINK + "答案：C反应蛋白", "C"),
    (THINK + "答案是B超", "B"),
    (THINK + "答案：D-二聚体", "D"),
    (THINK + "答案：A或C", "A"),  # hedges: a marker naming two letters
    (THINK + "答案：AC", "A"),
    (THINK + "答案：A、C", "A"),
    (THINK + "答案：A和C", "A"),
    (THINK + "答案：A/C", "A"),
    (THINK + "答案：A 或 C", "A"),
    (THINK + "答案：（A）或（C）", "A"),
    (THINK + "The answer is A or C.", "A"),
    (THINK + "答案：A\n\n不过再想想，答案：C", "C"),  # markers naming different letters after the think
    (THINK + "A A B C D", "D"),  # repetition of several letters
    (THINK + "ABCD", "A"),
    (THINK + "答案：ABCD", "A"),
    (THINK + "A. 卵巢\nB. 前庭大腺\nC. 子宫\nD. 输卵管", "D"),  # an answer copying all options
    (THINK + "A\nB\nC\nD", "D"),  # option lines naming different letters
    # a commitment followed by another option named: a rejected option, a hedge, a change of mind
    (THINK + "答案：A项错误，C项正确", "A"),
    (THINK + "答案：A. 错误；C. 正确", "A"),
    (THINK + "标准答案是A，但我认为是C", "A"),
    (THINK + "答案是C，也可能是A", "C"),
    (THINK + "答案：C, or maybe A", "C"),
    (THINK + "答案是C选项和A选项", "C"),
    (THINK + "答案：A选项或C选项", "A"),
    (THINK + "答案：A（也可以是B）", "A"),
    (THINK + "答案：A。不对，应该选C", "A"),
    (THINK + "答案：C答案：D", "D"),
    (THINK + "答案：A或\nC", "C"),
    (THINK + "答案：C\n\nA", "C"),  # a conflicting bare option line after the marker
    (THINK + "答案：C\nB", "C"),
    (THINK + "C\n答案：B", "B"),  # an option line, then a marker naming another letter
    (THINK + "答案：E", "E"),  # a letter the item does not have (four options)
    # a negated commitment: the letter is the one NOT chosen
    (THINK + "不应选A", "A"),
    (THINK + "绝不应选A", "A"),
    (THINK + "错误答案：A", "A"),
    (THINK + "不正确选项是A", "A"),
    (THINK + "不正确答案：A", "A"),
    (THINK + "应选A以外的选项", "A"),
    (THINK + "所以选A是错误的", "A"),
    (THINK + "答案不是\nA", "A"),  # the option-line fallback after a negation
    (THINK + "我不选\nA", "A"),
    # another option named after the commitment, after a word that is no medical term
    (THINK + "答案：A，但B也可以", "A"),
    (THINK + "答案：A，如果是成人则C", "A"),
    (THINK + "答案：A，其次B", "A"),
    (THINK + "答案：A。选项C也正确。", "A"),
    (THINK + "答案：A, but C is also correct.", "A"),
    (THINK + "答案：A或c", "A"),  # a lower-case hedge
    ("", None),  # an empty output
    (THINK, None),  # an empty answer
    ("<think>\n先看 A，再看 B，答案：C\n", "C"),  # an unclosed think: nothing is extractable
    ("答案：B\n<think>\n再想想", "B"),  # text before an unclosed think is no answer either
    ("<think>\n答案：B\n</think>\n\n我不确定。", "B"),  # a marker in the think only
    ("<think>\n想\n</think>\n\n答案：A\n</think>\n\n答案：A", "A"),  # a stray second </think>: stray_tag, as adherence
    ("<think>\n想\n</think>\n\n先想想</think>答案：B", "B"),
    ("<think>\n想\n</think>\n\n答案：B<think>", "B"),  # a stray <think>
]


@pytest.mark.parametrize("output,loose", UNEXTRACTABLE)
def test_adversarial_outputs_are_unextractable(output, loose):
    assert mcq.extract(output) == (None, "none")


READ = [  # (output, letter, extracted_by)
    (THINK + "答案：B项", "B", "marker"),  # 项 / 选项 after the letter name the option
    (THINK + "答案：B选项正确。", "B", "marker"),
    (THINK + "答案：选C", "C", "marker"),
    (THINK + "答案：**C**", "C", "marker"),
    (THINK + "答案：B，不选C反应蛋白那项", "B", "marker"),  # the sentence after the marker is not part of it
    (THINK + "答案应为 A。", "A", "marker"),
    (THINK + "答案：B\n\n综上，最终答案是 B。", "B", "marker"),  # the same letter twice is one answer
    (THINK + "A. 卵巢\nB. 前庭大腺\nC. 子宫\nD. 输卵管\n答案：A", "A", "marker"),
    (THINK + "维生素D缺乏时，B超可见……\n答案：A", "A", "marker"),
    (THINK + "答案：Ｃ", "C", "marker"),  # full-width letter
    (THINK + "正确选项是C", "C", "marker"),
    (THINK + "答案 C", "C", "marker"),
    (THINK + "应选 C 项，卵巢。", "C", "marker"),
    (THINK + "故选：D", "D", "marker"),
    (THINK + "A项错误，B项错误，D项不对。\n答案：C", "C", "marker"),  # options named before the commitment
    (THINK + "答案：C\n\nC", "C", "marker"),  # the same letter again
    (THINK + "答案：C\n解释：ACE抑制剂不选", "C", "marker"),  # a word made of option letters names no option
    (THINK + "女性生殖腺是卵巢。\nB", "B", "option_line"),  # the fallback: an option letter alone on a line
    (THINK + "综上所述：\n(B)", "B", "option_line"),
    (THINK + "B.", "B", "option_line"),
    (THINK + "**B**", "B", "option_line"),
    (THINK + "B\n\n解析：B超不能……\nB", "B", "option_line"),
    ("答案：D", "D", "marker"),  # no think block at all (enable_thinking=False)
    (THINK + "答案：B 卵巢", "B", "marker"),  # a space, then the option's text
    (THINK + "故选 B 卵巢", "B", "marker"),
    (THINK + "The answer is B because the ovary is the gonad.", "B", "marker"),
    (THINK + "答案：B\n\nB超显示卵巢正常", "B", "marker"),  # a medical term on the next line names no option
    (THINK + "不应选A，应选C", "C", "marker"),  # a negated letter, then the commitment
    (THINK + "错误答案：A，正确答案：C", "C", "marker"),
    (THINK + "所以选A是错误的，应选C", "C", "marker"),
    (THINK + "所以C选项不正确\n答案：A", "A", "marker"),  # a negation on the line before is about C
    (THINK + "C不正确\nA", "A", "option_line"),
    (THINK + "答案：B。\nB族维生素缺乏与此无关", "B", "marker"),
]


@pytest.mark.parametrize("output,pred,how", READ)
def test_markers_and_option_lines(output, pred, how):
    assert mcq.extract(output) == (pred, how)


MULTI = [  # (output, options, letters read for an item with several answers)
    (THINK + "答案：ACD", 5, "ACD"),
    (THINK + "答案：A、C、D", 5, "ACD"),
    (THINK + "答案：D，A，C", 5, "ACD"),
    (THINK + "答案：A和C", 4, "AC"),
    (THINK + "答案：E", 5, "E"),
    (THINK + "答案：AF", 6, "AF"),  # CMB's six options
    (THINK + "答案：A或C", 5, None),  # a hedge is no set
    (THINK + "答案：AC\n也可能是D", 5, None),  # a letter named after the set
    (THINK + "答案：AC，但D也可以", 5, None),
    (THINK + "答案：AF", 5, None),  # F is no option of a five-option item
]


@pytest.mark.parametrize("output,n,letters", MULTI)
def test_several_answers_are_read_as_a_set(output, n, letters):
    assert mcq.extract(output, n, multi=True)[0] == letters
    assert mcq.extract(output, n, multi=False)[0] in (None, letters if letters and len(letters) == 1 else None)


def test_several_answers_score_only_as_the_exact_set(tmp_path):
    rows = [{"id": str(i), "gold": gold, "multi": True, "choices": list("甲乙丙丁戊"), "output": THINK + f"答案：{out}"}
            for i, (gold, out) in enumerate([("ACD", "ACD"), ("ACD", "AC"), ("ACD", "ACDE"), ("AB", "BA")])]
    rows.append({"id": "9", "gold": "B", "choices": list("甲乙丙丁"), "output": THINK + "答案：B"})
    results = tmp_path / "r"
    run_script("benchmark.py", f"--score={_write(tmp_path / 'p.jsonl', rows)}", f"--results_dir={results}")
    s = json.loads((results / "benchmark_base.json").read_text(encoding="utf-8"))["benchmarks"]["all"]
    assert (s["multi"]["n"], s["multi"]["correct"]) == (4, 2)  # a subset or a superset is wrong
    assert (s["single"]["n"], s["single"]["correct"]) == (1, 1) and s["overall"]["correct"] == 3


def test_long_whitespace_runs_read_in_milliseconds():
    """A degenerate answer (a marker, then a run of blanks) once took 34 s for 200 spaces: the reader's whitespace
    quantifiers re-split the run between them (polynomial backtracking); 1,333 such answers would hang a run."""
    import time

    for output in ("答案：" + " " * 2000 + "x", "答案" + " \n" * 2000, "答案：(" + " " * 2000, "\n".join(["  * "] * 2000),
                   "答案：A" + " 或 A" * 2000 + "超"):
        start = time.perf_counter()
        assert mcq.extract(output) == (None, "none")
        assert time.perf_counter() - start < 1.0


def test_the_reader_and_adherence_split_the_think_alike():
    """One split for chat, adherence and the benchmark: what adherence calls a stray tag the reader cannot read."""
    for output, _ in UNEXTRACTABLE:
        if output_shape(output) in ("stray_tag", "unclosed"):
            assert mcq.extract(output)[0] is None
    assert not hasattr(mcq, "answer_part")  # no second split of its own


# --- re-scoring end to end: benchmark.py --score on hand-written rows ----------------------------------------
def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_counts_markers_option_lines_and_unextractable(tmp_path):
    # gold is the letter a loose reader credits, so every misread would count as right
    rows = [{"subject": "nutrition", "index": i, "gold": loose, "output": out}
            for i, (out, loose) in enumerate(UNEXTRACTABLE) if loose and loose in "ABCD"]
    n_bad = len(rows)
    rows += [{"subject": "nutrition", "index": 100 + i, "gold": pred, "output": out, "extraction": "letter"}
             for i, (out, pred, _) in enumerate(READ)]
    results = tmp_path / "results"
    run_script("benchmark.py", f"--score={_write(tmp_path / 'p.jsonl', rows)}", "--name=full",
               f"--results_dir={results}")
    summary = json.loads((results / "benchmark_full.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    n_line = sum(how == "option_line" for _, _, how in READ)
    assert summary["extracted_by"] == {"marker": len(READ) - n_line, "option_line": n_line, "none": n_bad}
    assert summary["overall"]["correct"] == len(READ) and summary["overall"]["unextractable"] == n_bad
    assert summary["overall"]["option_line"] == n_line
    scored = read_jsonl(results / "benchmark_full.jsonl")
    assert [r["extracted_by"] for r in scored] == ["none"] * n_bad + [how for _, _, how in READ]
    assert not any("extraction" in r for r in scored)  # an older reader's field is not kept beside today's
    report = (results / "README.md").read_text(encoding="utf-8")
    assert f"| {n_bad} (" in report and "option line" in report


# --- paired comparison ---------------------------------------------------------------------------------------
def test_mcnemar_exact_against_hand_computed_values():
    # b=1, c=9: 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024
    assert benchmarks.mcnemar(1, 9) == 0.021484375 == benchmarks.mcnemar(9, 1)
    assert benchmarks.mcnemar(0, 0) == 1.0 and benchmarks.mcnemar(5, 5) == 1.0  # no evidence either way
    assert benchmarks.mcnemar(0, 1) == 1.0 and benchmarks.mcnemar(3, 4) == 1.0  # capped at 1
    assert benchmarks.mcnemar(0, 6) == 2 / 64 and benchmarks.mcnemar(0, 5) == 2 / 32
    assert 0 < benchmarks.mcnemar(600, 700) == benchmarks.mcnemar(700, 600) < 0.01  # big counts: exact, no overflow


def score(monkeypatch, path, *args):
    """`python benchmark.py --score=path args`, in this process (a second each saved)."""
    monkeypatch.setattr(sys, "argv", ["benchmark.py", f"--score={path}", *args])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # configure() installs its own; restore it afterwards
    runpy.run_path(str(ROOT / "benchmark.py"), run_name="__main__")


def test_report_compares_each_pair_of_models_on_the_items_both_answered(tmp_path, monkeypatch):
    """base right on items 0-9 of 20, full on 1-19 (item 0 lost, 10-19 gained), lora on 0-4 of items 0-11, whose
    item 11 is another question (another dataset version): left out and counted."""
    results = tmp_path / "results"

    def rows(right, items, other=()):
        return [{"subject": "anatomy", "index": i, "question": "别的题" if i in other else f"题{i}", "gold": "A",
                 "output": "答案：A" if i in right else "答案：B"} for i in items]

    for name, made in (("lora", rows(range(5), range(12), other={11})), ("base", rows(range(10), range(20))),
                       ("full", rows(range(1, 20), range(20)))):
        score(monkeypatch, _write(tmp_path / f"{name}.jsonl", made), f"--name={name}", f"--results_dir={results}")
    pairs = json.loads((results / benchmarks.PAIRS_NAME).read_text(encoding="utf-8"))["cmmlu"]
    got = {(p["first"], p["second"]): (p["n"], p["first_correct"], p["second_correct"], p["b"], p["c"],
                                       p["question_differs"]) for p in pairs}
    # in report order; base vs full: b = item 0 (only base right), c = items 10-19 (only full right)
    assert list(got) == [("base", "full"), ("base", "lora"), ("full", "lora")]
    assert got == {("base", "full"): (20, 10, 19, 1, 10, 0), ("base", "lora"): (11, 10, 5, 5, 0, 1),
                   ("full", "lora"): (11, 10, 5, 6, 1, 1)}
    p = {(q["first"], q["second"]): q["p"] for q in pairs}
    assert p[("base", "full")] == benchmarks.mcnemar(1, 10) == 2 * (1 + 11) / 2 ** 11
    assert p[("base", "lora")] == 2 / 2 ** 5 and p[("full", "lora")] == 2 * (1 + 7) / 2 ** 7
    report = (results / "README.md").read_text(encoding="utf-8")
    assert "| base (untuned) vs full fine-tune | 20 | 50.0 / 95.0 | 1 | 10 | 0.0117 |" in report
    assert "| full fine-tune vs LoRA | 11 | 90.9 / 45.5 | 6 | 1 | 0.125 |" in report
    assert "McNemar" in report


def test_one_model_has_no_pairs(tmp_path, monkeypatch):
    results = tmp_path / "results"
    score(monkeypatch, _write(tmp_path / "b.jsonl", [{"gold": "A", "output": "A"}]), f"--results_dir={results}")
    assert json.loads((results / benchmarks.PAIRS_NAME).read_text(encoding="utf-8")) == {}
    assert "McNemar" not in (results / "README.md").read_text(encoding="utf-8")


# --- ModelScope: no remote code, the revision asked for and recorded -----------------------------------------
@pytest.fixture
def fake_modelscope(monkeypatch):
    """MsDataset.load recording its keyword arguments (a stand-in module: importing modelscope takes ~6 s)."""
    from medsft import models

    calls = []

    def load(name, **kw):
        calls.append((name, kw))
        return [{"Question": f"{kw['subset_name']}题", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "Answer": "B"}]

    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", types.SimpleNamespace(MsDataset=types.SimpleNamespace(
        load=load)))
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: None)
    return calls


def test_the_installed_modelscope_takes_those_arguments():
    """The names passed are MsDataset.load's own (read from the installed source, not imported: see above)."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec("modelscope").origin).parent / "msdatasets" / "ms_dataset.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    load = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MsDataset" for f in c.body
                if isinstance(f, ast.FunctionDef) and f.name == "load")
    assert {"subset_name", "split", "trust_remote_code", "version"} <= {a.arg for a in load.args.args}


def test_modelscope_load_trusts_no_remote_code_and_pins_the_revision(fake_modelscope):
    items, _ = benchmarks.load("cmmlu", "opencompass/cmmlu", subjects=["anatomy", "virology"], revision="abc123")
    assert [it["question"] for it in items] == ["anatomy题", "virology题"]
    assert fake_modelscope == [("opencompass/cmmlu", {"subset_name": s, "split": "test", "trust_remote_code": False,
                                                      "version": "abc123"}) for s in ("anatomy", "virology")]
    fake_modelscope.clear()
    benchmarks.load("cmmlu", "opencompass/cmmlu", subjects=["anatomy"])  # "": the hub's current version
    assert fake_modelscope == [("opencompass/cmmlu", {"subset_name": "anatomy", "split": "test",
                                                      "trust_remote_code": False})]


def _answering(letter):
    """medsft.generate.generate as a model that always answers ``letter``, without generating."""
    def generate(model, tokenizer, questions, *, on_batch, **kw):
        on_batch([(i, {"output": f"答案：{letter}", "new_tokens": 3, "finished": True}) for i in range(len(questions))])
    return generate


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--model_dir=tiny", *args])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    runpy.run_path(str(ROOT / "benchmark.py"), run_name="__main__")


def test_benchmark_records_the_dataset_revision(fake_modelscope, tmp_path, monkeypatch):
    """benchmark.py hands --dataset_revision to ModelScope and records it; another revision is other items."""
    from medsft import generate

    monkeypatch.setattr(generate, "generate", _answering("B"))
    args = ["--benchmarks=cmmlu", "--subjects=anatomy", f"--results_dir={tmp_path / 'r'}"]
    _run(monkeypatch, *args, "--dataset_revision=v1.0")
    summary = json.loads((tmp_path / "r" / "benchmark_base.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    assert summary["revision"] == "v1.0" and summary["overall"]["accuracy"] == 1.0
    assert fake_modelscope[-1][1]["version"] == "v1.0"
    with raises_naming(MedsftError, "--dataset_revision=v1.0", "ModelScope"):  # the option, the only source it fits
        benchmarks.load("cmmlu", str(tmp_path), revision="v1.0")


def test_a_resumed_file_is_read_again_by_todays_reader(fake_modelscope, tmp_path, monkeypatch):
    """Rows an earlier run (and reader) left are re-read on resume: one file never mixes two readers."""
    from medsft import generate

    monkeypatch.setattr(generate, "generate", _answering("B"))
    [item], _ = benchmarks.load("cmmlu", "opencompass/cmmlu", subjects=["anatomy"])
    assert item["gold"] == "B"  # which the old reader credited for B超
    old = {**item, "sample": 0, "output": "B超正常。", "pred": "B", "correct": True, "extraction": "letter",
           "model": "tiny"}
    _write(tmp_path / "benchmark_base.jsonl", [old])
    _run(monkeypatch, "--benchmarks=cmmlu", "--subjects=anatomy", f"--results_dir={tmp_path}")
    [row] = read_jsonl(tmp_path / "benchmark_base.jsonl")
    assert (row["pred"], row["correct"], row["extracted_by"], "extraction" in row) == (None, False, "none", False)
    summary = json.loads((tmp_path / "benchmark_base.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    assert summary["overall"]["unextractable"] == 1 and summary["overall"]["accuracy"] == 0.0


# --- the one row reader (benchmark.py, train_grpo.py, data.py) -------------------------------------------------
ROWS = [{"question": f"问题{i}", "think": f"想\n{i}", "answer": str(i)} for i in range(4)]


def test_every_format_gives_the_same_records_with_file_line(tmp_path):
    """JSONL: the line; a JSON list: the line its element starts on; CSV: the line its record starts on (cells
    may span lines); parquet: the row. Every CSV cell is text."""
    import csv

    import datasets

    (tmp_path / "a.jsonl").write_text("\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS),
                                      encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(ROWS, ensure_ascii=False, indent=2), encoding="utf-8")
    with open(tmp_path / "c.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(ROWS)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    expected = {"a.jsonl": [2, 3, 4, 5], "b.json": [2, 7, 12, 17], "c.csv": [2, 4, 6, 8],
                "d.parquet": ["row 1", "row 2", "row 3", "row 4"]}
    for name, wheres in expected.items():
        got = list(rows.read_records(tmp_path / name))
        assert [w for w, _ in got] == [f"{tmp_path / name}:{w}" for w in wheres], name
        assert [r for _, r in got] == ROWS, name


def test_a_folder_is_its_files_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps([ROWS[0]]), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not rows", encoding="utf-8")
    assert [r for _, r in rows.read_records(tmp_path)] == ROWS[:2]
    with raises_naming(MedsftError, tmp_path / "notes.txt"):
        list(rows.read_records(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with raises_naming(MedsftError, tmp_path / "empty"):
        list(rows.read_records(tmp_path / "empty"))


def test_a_json_list_element_that_is_no_object_is_an_error(tmp_path):
    """Every record is an object or the reason it is bad (a string): an element that is a string or number is bad."""
    src = tmp_path / "x.json"
    src.write_text(json.dumps([ROWS[0], "问题", 3, ROWS[1]], ensure_ascii=False, indent=1), encoding="utf-8")
    got = list(rows.read_records(src))
    assert [r for _, r in got if isinstance(r, dict)] == ROWS[:2]
    assert len(got) == 4 and all(isinstance(r, str) and r not in ("问题", "3") for _, r in got[1:3])


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_file_in_another_encoding_is_one_error_naming_its_line(tmp_path, suffix):
    src = tmp_path / f"gbk{suffix}"
    text = ("question,think,answer\n" + "".join(f"{r['question']},想,{r['answer']}\n" for r in ROWS)
            if suffix == ".csv" else json.dumps(ROWS, ensure_ascii=False, indent=1))
    src.write_bytes(text.encode("gbk"))
    first = next(i for i, line in enumerate(text.splitlines(), 1) if not line.isascii())
    with raises_naming(MedsftError, f"{src}:{first}: ", "UTF-8"):
        list(rows.read_records(src))


def test_a_broken_json_list_names_its_line_and_jsonl_whose_first_line_is_a_list_stays_lines(tmp_path):
    src = tmp_path / "x.json"
    src.write_text(json.dumps(ROWS[:2], indent=1) + "\n\n{}\n", encoding="utf-8")  # text after the closing ]
    with raises_naming(MedsftError, f"{src}:{json.dumps(ROWS[:2], indent=1).count(chr(10)) + 3}: "):
        list(rows.read_records(src))
    src = tmp_path / "x.jsonl"  # a bad first line that happens to be a list: one bad row, the rest kept
    src.write_text("[1, 2]\n" + "".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    got = list(rows.read_records(src))
    assert isinstance(got[0][1], str) and [r for _, r in got[1:]] == ROWS
    assert [w for w, _ in got] == [f"{src}:{n}" for n in range(1, 6)]
