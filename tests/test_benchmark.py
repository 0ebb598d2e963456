"""benchmark.py / medsft.benchmarks on the real CMMLU medical items and MedQA-MCMLE dev split in ../shared (skipped
without it) and on files written in CMB's and CMExam's published layouts: loading every layout, the seeded sample,
answer extraction, Wilson intervals, scores of scripted models, samples and majority, resume, the tiny end-to-end
run, marks on models measured on other items, bad input."""

from __future__ import annotations

import json
import runpy
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, run_script
from oracles import assert_exit, lines_naming, numbers_in, raises_naming

from medsft import benchmarks, charts, mcq, report
from medsft.files import MedsftError, read_jsonl

CMMLU = SHARED / "cmmlu-medical"
COUNTS = {"anatomy": 148, "clinical_knowledge": 237, "college_medicine": 273, "genetics": 176, "nutrition": 145,
          "traditional_chinese_medicine": 185, "virology": 169}


@pytest.fixture(scope="module")
def cmmlu_dir(shared_dir) -> Path:
    if not (CMMLU / "test").is_dir():
        pytest.skip("../shared/cmmlu-medical is absent")
    return CMMLU / "test"


@pytest.fixture(scope="module")
def items(cmmlu_dir) -> list[dict]:
    return benchmarks.load("cmmlu", str(cmmlu_dir))[0]


def run_main(monkeypatch, *args: str):
    """benchmark.py's main() in this process, as `python benchmark.py args` would run it."""
    monkeypatch.setattr(sys, "argv", ["benchmark.py", *args])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # configure() installs its own; restore it afterwards
    runpy.run_path(str(ROOT / "benchmark.py"), run_name="__main__")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --- items -----------------------------------------------------------------------------------------------------
def test_loads_the_1333_real_items(items, cmmlu_dir):
    assert len(items) == 1333 and Counter(it["group"] for it in items) == COUNTS
    assert all(it["gold"] in "ABCD" and len(it["choices"]) == 4 and all(it["choices"]) for it in items)
    assert [it["id"] for it in items if it["group"] == "genetics"] == [f"genetics:{i}" for i in range(176)]
    assert items[0]["question"] == "女性生殖腺是" and items[0]["gold"] == "A" and not items[0]["multi"]
    some, _ = benchmarks.load("cmmlu", str(cmmlu_dir.parent), subjects=["virology", "anatomy"])  # the folder above
    assert [it["group"] for it in some] == ["virology"] * 169 + ["anatomy"] * 148
    text = mcq.prompt(items[0], items[0]["subject"])
    assert "解剖学" in text and "女性生殖腺是\nA. 卵巢\nB. 前庭大腺" in text and text.endswith("X 为 A、B、C、D 中的一个字母。")


def test_the_sample_is_seeded_the_same_items_for_every_model_not_the_first_rows(items):
    picked = benchmarks.sample(items, 100, seed=42)
    assert len(picked) == 100 and picked == benchmarks.sample(list(reversed(items)), 100, seed=42)[::-1]
    assert len({it["group"] for it in picked}) == 7  # across the subjects, not the first file's first rows
    assert picked != items[:100] and benchmarks.sample(items, 100, seed=7) != picked
    assert benchmarks.sample(items, 0, 42) == items and benchmarks.selection(picked) != benchmarks.selection(items)


def test_medqa_mcmle_real_dev_split_in_its_published_layout(shared_dir):
    path = SHARED / "medmcq" / "medqa_mcmle_dev.jsonl"
    if not path.is_file():
        pytest.skip("../shared/medmcq is absent")
    found, bad = benchmarks.load("medqa_mcmle", str(path))
    assert (len(found), bad) == (3425, []) and all(len(it["choices"]) == 5 for it in found)
    assert Counter(it["gold"] for it in found) == {"A": 613, "B": 690, "C": 758, "D": 729, "E": 635}
    assert "“答案：X”，X 为 A、B、C、D、E 中的一个字母" in mcq.prompt(found[0])
    folder = path.parent  # a folder is searched for the split's file
    assert len(benchmarks.load("medqa_mcmle", str(folder))[0]) == 3425 if (folder / "test.jsonl").exists() else True


def test_cmb_and_cmexam_in_their_published_layouts(tmp_path, capsys):
    cmb, _ = benchmarks.load("cmb", str(ROOT / "demo/benchmarks/cmb"))  # questions and their answers apart
    assert [it["gold"] for it in cmb] == ["B", "C", "D", "ACD", "A", "ABD"]
    assert [it["multi"] for it in cmb] == [False, False, False, True, False, True]
    assert [len(it["choices"]) for it in cmb] == [5, 5, 4, 5, 6, 4] and cmb[0]["group"] == "医师考试"
    assert "多项选择题" in mcq.prompt(cmb[3]) and "“答案：XY”" in mcq.prompt(cmb[3])
    cmexam, _ = benchmarks.load("cmexam", str(ROOT / "demo/benchmarks/cmexam"))
    assert [it["gold"] for it in cmexam] == ["C", "B", "ABCE", "B", "A"] and cmexam[1]["choices"][1] == "心律失常"
    # bad rows: each named with its file:line and reason, counted, the good ones kept
    rows = [{"question": "q1", "option": {"A": "a", "B": "b"}, "answer": "A", "question_type": "单项选择题"},
            {"question": "q2", "option": {"A": "a", "B": "b"}, "answer": "AB", "question_type": "单项选择题"},
            {"question": "q3", "option": {"A": "a", "C": "c"}, "answer": "A"},
            {"question": "q4", "option": {"A": "a", "B": "b"}, "answer": "C"}]
    path = tmp_path / "CMB-test-choice-question-merge.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    good, bad = benchmarks.load("cmb", str(tmp_path))
    assert [it["question"] for it in good] == ["q1"] and len(bad) == 3
    lines = [b["where"] for b in bad]
    assert lines == [f"{path}:{n}" for n in (11, 20, 28)]  # the line where each element starts
    printed = capsys.readouterr().out
    assert all(w in printed for w in lines)
    csv = tmp_path / "cmexam" / "test.csv"
    csv.parent.mkdir()
    csv.write_text('Question,Options,Answer,Explanation\nq,"A 甲\nB 乙",B,e\nq2,"A 甲\n乙",A,e\n', encoding="utf-8")
    good, bad = benchmarks.load("cmexam", str(csv.parent))
    assert len(good) == 1 and bad == [{"where": f"{csv}:4", "reason": "'Options' is not lines 'A 文本'"}]
    with raises_naming(MedsftError, tmp_path / "absent", "git clone https://github.com/williamliujl/CMExam"):
        benchmarks.load("cmexam", str(tmp_path / "absent"))


# --- extraction ------------------------------------------------------------------------------------------------
THINK = "<think>\n题目问女性生殖腺。A 卵巢产生卵子；B 前庭大腺分泌黏液，不是生殖腺；答案：B 显然不对。\n</think>\n\n"
CASES = [
    (THINK + "女性的生殖腺是卵巢，产生卵子并分泌激素。\n答案：C", "C", "marker"),  # the think's A, B and 答案：B ignored
    (THINK + "综上所述。\n\n**答案：D**", "D", "marker"),
    (THINK + "**答案**：D", "D", "marker"),
    (THINK + "答案是B", "B", "marker"),
    (THINK + "答案为 A。", "A", "marker"),
    (THINK + "答案: A", "A", "marker"),  # half-width colon
    (THINK + "答案：（C）", "C", "marker"),
    (THINK + "初步答案：A，但复核后发现 A 有误。\n答案：B", None, "none"),  # markers naming two letters: a change of mind
    (THINK + "卵巢是女性生殖腺。The answer is B.", "B", "marker"),
    (THINK + "卵巢是女性生殖腺。\n\nC", "C", "option_line"),  # the fallback: a letter alone on a line
    (THINK + "应选 C 项，卵巢。", "C", "marker"),  # 应选 commits
    (THINK + "DNA 与卵巢无关，我无法确定。", None, "none"),  # letters inside a word are not options
    (THINK + "答案是Apple", None, "none"),
    ("<think>\n先看 A，再看 B，答案：C\n", None, "none"),  # cut off mid-think: no answer yet
    ("答案：D", "D", "marker"),  # no think block at all
    ("", None, "none"),
]


@pytest.mark.parametrize("output,pred,how", CASES)
def test_extraction_on_realistic_outputs(output, pred, how):
    assert mcq.extract(output) == (pred, how)


# --- statistics ------------------------------------------------------------------------------------------------
def test_wilson_interval_against_hand_computed_values():
    # 8 of 10, z = 1.96: (p + z²/2n) / (1 + z²/n) = (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n) = 1.95996 · sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658
    lo, hi = benchmarks.wilson(8, 10)
    assert lo == pytest.approx(0.71674 - 0.22658, abs=2e-5) and hi == pytest.approx(0.71674 + 0.22658, abs=2e-5)
    # 0 of 10: [0, z²/(n + z²)] = [0, 3.84146 / 13.84146]; n of n mirrors it
    assert benchmarks.wilson(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert benchmarks.wilson(10, 10) == (pytest.approx(1 - 0.277533, abs=1e-6), 1.0)


# --- scripted models -------------------------------------------------------------------------------------------
def test_scripted_models_right_gives_100_and_always_a_gives_the_share_of_a(items, tmp_path):
    right = [{**it, "output": f"<think>\n逐一排除：A 不对，B 不对。\n</think>\n\n**答案：{it['gold']}**"} for it in items]
    always_a = [{"subject": it["group"], "index": int(it["id"].split(":")[1]), "gold": it["gold"], "output": "答案：A"}
                for it in items]
    results = tmp_path / "results"
    for name, rows in (("full", [{"subject": r["group"], "index": int(r["id"].split(":")[1]), **r} for r in right]),
                       ("base", always_a)):
        proc = run_script("benchmark.py", f"--score={write_rows(tmp_path / f'{name}.jsonl', rows)}", f"--name={name}",
                          f"--results_dir={results}")
        assert lines_naming(proc.stdout, results / f"benchmark_{name}.json"), proc.stdout
    full = json.loads((results / "benchmark_full.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    assert full["overall"]["accuracy"] == 1.0 and full["overall"]["n"] == 1333 and full["overall"]["unextractable"] == 0
    assert all(s["accuracy"] == 1.0 for s in full["by_group"].values()) and len(full["by_group"]) == 7
    base = json.loads((results / "benchmark_base.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    golds = Counter(it["gold"] for it in items)
    assert base["overall"]["correct"] == golds["A"] and base["overall"]["accuracy"] == round(golds["A"] / 1333, 6)
    for subject, stats in base["by_group"].items():
        assert stats["correct"] == sum(it["gold"] == "A" for it in items if it["group"] == subject)
    assert base["overall"]["ci95"][0] < base["overall"]["accuracy"] < base["overall"]["ci95"][1]
    # the chart holds both models and is a pure function of the summaries; the report section lists both
    png = charts.benchmark_chart(benchmarks.load_summaries(results))
    assert png == (results / "benchmark.png").read_bytes() and png[:8] == b"\x89PNG\r\n\x1a\n"
    section = report.benchmark_section(benchmarks.load_summaries(results))
    assert "| base (untuned) | full fine-tune |" in section and "| **overall** | 1333 | " in section
    assert "100.0 [99.7, 100.0]" in section and "‡" not in section  # the same items: nothing marked
    # item by item: the always-A model is right only where the right one is too
    [pair] = json.loads((results / benchmarks.PAIRS_NAME).read_text(encoding="utf-8"))["cmmlu"]
    assert (pair["first"], pair["second"], pair["n"], pair["b"]) == ("base", "full", 1333, 0)
    assert pair["c"] == 1333 - golds["A"]
    assert pair["p"] == benchmarks.mcnemar(0, 1333 - golds["A"]) < 1e-100


# A scripted model behind the real generation call: it answers from the prompt, so the prompt and row wiring run.
def _fake_generate(items, calls, stop_after=None, answer=None):
    answers = {mcq.prompt(it, it["subject"]): it["gold"] for it in items}

    def generate(model, tokenizer, questions, *, batch_size, on_batch, seed, **kw):
        calls.append(len(questions))
        for start in range(0, len(questions), batch_size):
            if stop_after is not None and start >= stop_after * batch_size:
                raise KeyboardInterrupt  # as a Ctrl-C mid-run
            batch = range(start, min(start + batch_size, len(questions)))
            on_batch([(i, {"output": f"<think>\n想一想。\n</think>\n\n答案：{answer(seed, i) if answer else answers[questions[i]]}",
                           "new_tokens": 9, "finished": True}) for i in batch])
        return []

    return generate


def test_thinking_off_asks_with_the_hard_switch(items, cmmlu_dir, tmp_path, monkeypatch):
    """--enable_thinking=false reaches the generation as Qwen3's hard switch and is recorded; a file made with
    thinking on is never resumed with it off."""
    from medsft import generate

    seen = []
    fake = _fake_generate(items, [])
    monkeypatch.setattr(generate, "generate", lambda *a, **kw: (seen.append(kw.get("modes")), fake(*a, **kw))[1])
    args = ["--model_dir=tiny", "--limit=2", f"--benchmarks=cmmlu={cmmlu_dir}", "--max_new_tokens=8",
            f"--results_dir={tmp_path}"]
    run_main(monkeypatch, *args, "--enable_thinking=false")
    assert seen and all(m == ["no_think_hard"] * len(m) for m in seen)
    summary = json.loads((tmp_path / "benchmark_base.json").read_text(encoding="utf-8"))
    assert summary["decoding"]["enable_thinking"] is False
    with raises_naming(MedsftError, tmp_path / "benchmark_base.jsonl", "enable_thinking=False", "--name",
                       "--results_dir"):  # the file, the setting it was started with, the ways out
        run_main(monkeypatch, *args)


def test_resume_after_an_interruption_gives_the_uninterrupted_files(items, cmmlu_dir, tmp_path, monkeypatch):
    from medsft import generate

    args = ["--model_dir=tiny", "--limit=10", f"--benchmarks=cmmlu={cmmlu_dir}", "--batch_size=4", "--max_new_tokens=8"]
    calls = []
    monkeypatch.setattr(generate, "generate", _fake_generate(items, calls))
    run_main(monkeypatch, *args, f"--results_dir={tmp_path / 'once'}")
    monkeypatch.setattr(generate, "generate", _fake_generate(items, calls, stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        run_main(monkeypatch, *args, f"--results_dir={tmp_path / 'twice'}")
    partial = read_jsonl(tmp_path / "twice" / "benchmark_base.jsonl")
    assert len(partial) == 8 and not json.loads((tmp_path / "twice" / "benchmark_base.json").read_text())["complete"]
    monkeypatch.setattr(generate, "generate", _fake_generate(items, calls))
    run_main(monkeypatch, *args, f"--results_dir={tmp_path / 'twice'}")
    assert calls == [10, 10, 2]  # the resumed run generated only the missing items
    for name in ("benchmark_base.jsonl", "benchmark_base.json"):
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "twice" / name).read_bytes()
    summary = json.loads((tmp_path / "once" / "benchmark_base.json").read_text(encoding="utf-8"))
    assert summary["complete"] and summary["benchmarks"]["cmmlu"]["overall"]["accuracy"] == 1.0
    rows = tmp_path / "twice" / "benchmark_base.jsonl"
    with raises_naming(MedsftError, rows, "max_new_tokens=8", "--name"):  # other settings are never mixed in
        run_main(monkeypatch, *args[:-1], "--max_new_tokens=9", f"--results_dir={tmp_path / 'twice'}")
    first = read_jsonl(rows)[0]
    with raises_naming(MedsftError, f"{rows}:1:", f"cmmlu#{first['id']}", "--seed", "--name"):  # other items
        run_main(monkeypatch, *args, "--seed=7", "--do_sample=false", f"--results_dir={tmp_path / 'twice'}")


def test_samples_give_the_mean_with_its_interval_and_the_majority(items, cmmlu_dir, tmp_path, monkeypatch):
    """--samples=3: three answers per item, each sample its own seed; accuracy is their mean, beside the majority."""
    from medsft import generate

    gold = {i: it["gold"] for i, it in enumerate(benchmarks.sample(items, 20, 42))}
    seeds = []

    def answer(seed, i):  # sample 0 right on every item, samples 1 and 2 right on even items only
        seeds.append(seed)
        return gold[i] if seed == 42 or i % 2 == 0 else ("A" if gold[i] != "A" else "B")

    monkeypatch.setattr(generate, "generate", _fake_generate(items, [], answer=answer))
    run_main(monkeypatch, "--model_dir=tiny", "--limit=20", f"--benchmarks=cmmlu={cmmlu_dir}", "--samples=3",
             "--batch_size=20", f"--results_dir={tmp_path}")
    assert len(set(seeds)) == 3  # each sample its own seed
    s = json.loads((tmp_path / "benchmark_base.json").read_text(encoding="utf-8"))["benchmarks"]["cmmlu"]
    o = s["overall"]
    assert (o["n"], o["answers"], s["samples"]) == (20, 60, 3)
    assert o["accuracy"] == round((10 * 1 + 10 / 3) / 20, 6) and o["ci95"][0] < o["accuracy"] < o["ci95"][1]
    assert s["majority"]["accuracy"] == 0.5  # odd items: 1 of 3 samples right, the majority wrong
    assert len(read_jsonl(tmp_path / "benchmark_base.jsonl")) == 60


def test_lora_adapter_as_model_dir(items, cmmlu_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from medsft import generate
    from medsft.models import load_model

    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    get_peft_model(load_model("tiny"), lora).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "tiny"}))
    calls = []
    monkeypatch.setattr(generate, "generate", _fake_generate(items, calls))
    run_main(monkeypatch, f"--model_dir={adapter}", "--name=lora", "--limit=3", f"--benchmarks=cmmlu={cmmlu_dir}",
             f"--results_dir={tmp_path}")
    summary = json.loads((tmp_path / "benchmark_lora.json").read_text(encoding="utf-8"))
    assert (summary["model"], summary["adapter"], summary["benchmarks"]["cmmlu"]["overall"]["n"]) == \
        ("tiny", str(adapter), 3)
    assert all(r["adapter"] == str(adapter) for r in read_jsonl(tmp_path / "benchmark_lora.jsonl"))


def test_models_on_other_items_are_marked_not_shown_plainly_side_by_side(items, cmmlu_dir, tmp_path, monkeypatch):
    from medsft import generate

    monkeypatch.setattr(generate, "generate", _fake_generate(items, []))
    common = ["--model_dir=tiny", "--limit=5", f"--benchmarks=cmmlu={cmmlu_dir}", f"--results_dir={tmp_path}"]
    run_main(monkeypatch, *common, "--name=base")
    run_main(monkeypatch, *common, "--name=full")
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| base (untuned) | full fine-tune |" in text and "‡" not in text
    run_main(monkeypatch, *common, "--name=lora", "--seed=7")  # another seeded sample: other items
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| base (untuned) | full fine-tune | LoRA ‡ |" in text


# --- the real script, offline ----------------------------------------------------------------------------------
def test_tiny_end_to_end_offline_and_a_rerun_changes_nothing(cmmlu_dir, tmp_path):
    results = tmp_path / "results"
    suite = f"cmmlu={cmmlu_dir},cmb={ROOT / 'demo/benchmarks/cmb'},cmexam={ROOT / 'demo/benchmarks/cmexam'}"
    args = ["--model_dir=tiny", "--limit=3", f"--benchmarks={suite}", f"--results_dir={results}", "--max_new_tokens=8"]
    run_script("benchmark.py", *args)
    names = {"benchmark_base.jsonl", "benchmark_base.json", "benchmark_base.config.json", "benchmark.png", "README.md",
             "benchmark.pairs.json"}
    assert {p.name for p in results.iterdir()} == names
    rows = read_jsonl(results / "benchmark_base.jsonl")
    assert [r["benchmark"] for r in rows] == ["cmmlu"] * 3 + ["cmb"] * 3 + ["cmexam"] * 3
    assert all({"benchmark", "id", "question", "gold", "output", "pred", "correct", "think_tokens"} <= r.keys()
               for r in rows)
    summary = json.loads((results / "benchmark_base.json").read_text(encoding="utf-8"))
    assert list(summary["benchmarks"]) == ["cmmlu", "cmb", "cmexam"] and summary["complete"]
    assert {b: s["overall"]["n"] for b, s in summary["benchmarks"].items()} == {"cmmlu": 3, "cmb": 3, "cmexam": 3}
    assert summary["benchmarks"]["cmb"]["license"] == "Apache-2.0" and summary["model"] == "tiny"
    assert summary["decoding"]["max_new_tokens"] == 8 and summary["decoding"]["enable_thinking"] is True
    assert json.loads((results / "benchmark_base.config.json").read_text())["LIMIT"] == 3
    before = {n: (results / n).read_bytes() for n in names}
    proc = run_script("benchmark.py", *args)
    rows = results / "benchmark_base.jsonl"  # said: 9 items x 1 sample; 9 answers in the file, 0 to generate
    assert [9, 1, 9, 0] in [numbers_in(line, rows) for line in lines_naming(proc.stdout, rows)], proc.stdout
    assert "loading" not in proc.stdout
    assert {n: (results / n).read_bytes() for n in names} == before


# --- bad input -------------------------------------------------------------------------------------------------
def test_bad_input_gives_one_clear_message_with_file_and_line(tmp_path, monkeypatch):
    header = ",Question,A,B,C,D,Answer\n"
    good = '0,"多行\n题干",甲,乙,丙,丁,A\n'
    (tmp_path / "genetics.csv").write_text(header + good + "1,题,甲,乙,丙,丁,E\n", encoding="utf-8")
    (tmp_path / "virology.csv").write_text(header + "1,,甲,乙,丙,丁,B\n", encoding="utf-8")
    items, bad = benchmarks.load("cmmlu", str(tmp_path), subjects=["genetics"])  # a bad row: named, counted, left out
    assert len(items) == 1 and [b["where"] for b in bad] == [f"{tmp_path / 'genetics.csv'}:4"]
    assert "E" in bad[0]["reason"]
    for subject, facts in (("virology", [f"cmmlu={tmp_path}"]), ("nutrition", [tmp_path, "nutrition.csv", "virology"])):
        with raises_naming(MedsftError, *facts):  # the source; or the folder, the file missing, the subjects there
            benchmarks.load("cmmlu", str(tmp_path), subjects=[subject])
    preds = write_rows(tmp_path / "p.jsonl", [{"gold": "A", "output": "答案：A"}, {"gold": "G", "output": "答案：A"}])
    write_rows(tmp_path / "q.jsonl", [{"gold": "A"}])
    for args, facts in (([f"--benchmarks=cmmlu={tmp_path}", "--model_dir=tiny", "--subjects=virology"],
                         [f"cmmlu={tmp_path}"]),
                        ([f"--score={preds}"], [f"{preds}:2:", "'G'"]),  # the file:line and the bad value
                        ([f"--score={tmp_path / 'q.jsonl'}"], [f"{tmp_path / 'q.jsonl'}:1:", "'output'"]),
                        (["--subjects=Anatomy"], ["--subjects=Anatomy", "anatomy"]),  # the value, and the right one
                        (["--benchmarks=cmmlu,mmlu"], ["--benchmarks=cmmlu,mmlu", "'mmlu'", "cmb", "cmexam"]),
                        ([f"--benchmarks=cmb={tmp_path / 'none'}"],
                         [tmp_path / "none", "git clone https://github.com/FreedomIntelligence/CMB"]),
                        (["--name=my model"], ["--name=my model"])):
        proc = run_script("benchmark.py", *args, f"--results_dir={tmp_path / 'r'}", check=False)
        assert_exit(proc, 1, *facts)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # that one line is all stderr holds
    assert not (tmp_path / "r").exists()


def test_modelscope_offline_fails_fast_pointing_at_a_local_folder(monkeypatch):
    from medsft import models

    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    with raises_naming(MedsftError, "'opencompass/cmmlu'", "offline", "git clone https://github.com/haonan-li/CMMLU",
                       "--benchmarks=cmmlu="):
        benchmarks.load("cmmlu", "opencompass/cmmlu", subjects=["anatomy"])
