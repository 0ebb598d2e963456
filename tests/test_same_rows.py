"""Every model of one evaluation is scored on the same questions of TEST_FILE, on one IDF scale (issue 22, item 4)."""
from __future__ import annotations

import json
import random

import metrics_ns as metrics
import pytest
from conftest import run_script
from oracles import assert_exit, numbers_in
from test_eval_scripts import SCRIPTS, _pred, _write

from medsft.chat import format_reference
from medsft.files import read_jsonl

N = 12


@pytest.fixture(scope="module")
def split(tmp_path_factory, demo_data_path):
    """TEST_FILE of N questions; full = the reference itself, base = another question's reference."""
    d = tmp_path_factory.mktemp("same_rows")
    rows = read_jsonl(demo_data_path)[:N]
    _write(d / "test.jsonl", [{"id": f"q{i}", "question": r["question"], "think": r["think"], "answer": r["answer"]}
                              for i, r in enumerate(rows)])
    full = [_pred(i, r, format_reference(r["think"], r["answer"]), "output/full") for i, r in enumerate(rows)]
    base = [_pred(i, r, format_reference(rows[(i + 5) % N]["think"], r["answer"]), "Qwen/Qwen3-1.7B")
            for i, r in enumerate(rows)]
    lora = [_pred(i, r, format_reference(r["think"], rows[(i + 1) % N]["answer"]), "Qwen/Qwen3-1.7B",
                  adapter="output/lora") for i, r in enumerate(rows)]
    for name, preds in (("full", full), ("base", base), ("lora", lora)):
        _write(d / f"predictions_{name}.jsonl", preds)
    (d / "predictions_base.summary.json").write_text(json.dumps(
        {"model": "Qwen/Qwen3-1.7B", "n": N // 2, "max_new_tokens": 512, "do_sample": True, "temperature": 0.6,
         "top_p": 0.95, "top_k": 20, "seed": 7, "batch_size": 4, "backend": "transformers", "system": None}),
        encoding="utf-8")
    return d


def _args(d, tag, base, results):
    return [f"--predictions={d}/predictions_{tag}.jsonl", f"--base_predictions={base}", f"--test_file={d}/test.jsonl",
            f"--results_dir={results}", "--workers=1", "--base_model=Qwen/Qwen3-1.7B"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_predictions_file_missing_questions_is_refused_with_the_command_that_completes_it(split, tmp_path, script):
    """A base file with half the rows beside a complete fine-tune was scored with a warning only: the two models
    then stood side by side on different questions."""
    half = tmp_path / "predictions_base.jsonl"
    _write(half, read_jsonl(split / "predictions_base.jsonl")[: N // 2])
    (tmp_path / "predictions_base.summary.json").write_bytes((split / "predictions_base.summary.json").read_bytes())
    tag = "lora" if "lora" in script else "full"
    proc = run_script(script, *_args(split, tag, half, tmp_path / "results"), check=False)
    msg = assert_exit(proc, 1, f"{half}:", f"{split}/test.jsonl", lines=2)  # the file, its split, the command
    assert numbers_in(msg.splitlines()[0], half, f"{split}/test.jsonl") == [N - N // 2, N], msg  # missing, of all
    # the settings the file was started with, so inference.py resumes it instead of refusing other settings
    command = (f"python inference.py --model_dir=Qwen/Qwen3-1.7B --input={split}/test.jsonl --output={half} "
               "--max_new_tokens=512 --do_sample=true --temperature=0.6 --top_p=0.95 --top_k=20 --seed=7 "
               "--batch_size=4 --backend=transformers")
    assert command in proc.stderr.splitlines()[-1], proc.stderr
    assert not (tmp_path / "results").exists()  # nothing scored, nothing written


def test_a_tuned_file_missing_questions_and_rows_of_another_reference_are_refused(split, tmp_path):
    rows = read_jsonl(split / "predictions_full.jsonl")
    _write(tmp_path / "predictions_full.jsonl", rows[1:])
    (tmp_path / "test.jsonl").write_bytes((split / "test.jsonl").read_bytes())
    proc = run_script("evaluate.py", *_args(tmp_path, "full", split / "predictions_base.jsonl", tmp_path / "r"),
                      check=False)
    msg = assert_exit(proc, 1, tmp_path / "predictions_full.jsonl", "'q0'",  # the file, the row missing, the fix
                      f"python inference.py --model_dir=output/full --input={tmp_path}/test.jsonl", lines=2)
    assert numbers_in(msg.splitlines()[0], tmp_path / "predictions_full.jsonl", tmp_path / "test.jsonl") == [1, 12]
    # the same question with another reference: predicted on another version of the split
    rows[3]["ref_think"] += "多出的一句。"
    _write(tmp_path / "predictions_full.jsonl", rows)
    proc = run_script("rouge_eval.py", *_args(tmp_path, "full", split / "predictions_base.jsonl", tmp_path / "r"),
                      check=False)
    assert_exit(proc, 1, tmp_path / "predictions_full.jsonl", "'q3'", tmp_path / "test.jsonl", "--test_file")
    assert not (tmp_path / "r").exists()


def test_a_model_scores_the_same_alone_and_beside_another_in_any_row_order(split, tmp_path):
    """The chance floor pairs each question with the same other question, and the IDF is the split's, whether
    the full fine-tune is scored alone, or beside the base model from a file written in another order."""
    alone = tmp_path / "alone"
    run_script("evaluate.py", *_args(split, "full", split / "predictions_base.jsonl", alone), "--eval_base=false")
    shuffled = tmp_path / "predictions_full.jsonl"
    rows = read_jsonl(split / "predictions_full.jsonl")
    random.Random(3).shuffle(rows)
    _write(shuffled, rows)
    (tmp_path / "test.jsonl").write_bytes((split / "test.jsonl").read_bytes())
    beside = tmp_path / "beside"
    run_script("evaluate.py", *_args(tmp_path, "full", split / "predictions_base.jsonl", beside))
    a, b = (json.loads((d / "cot_full.json").read_text(encoding="utf-8")) for d in (alone, beside))
    for key in ("scores", "chance_floor", "baselines", "format", "n", "n_no_think"):
        assert a[key] == b[key], key
    assert read_jsonl(alone / "cot_full.jsonl") == read_jsonl(beside / "cot_full.jsonl")
    assert (beside / "cot_base.json").is_file()


def test_the_idf_comes_from_the_references_not_from_the_scored_rows(split):
    """Each row's score depends on its own think and the split's references only: scored among all rows or
    among a few, with the split's references, it is the same number."""
    preds = read_jsonl(split / "predictions_base.jsonl")
    refs = [r["think"] + "\n" + r["answer"] for r in read_jsonl(split / "test.jsonl")]
    _, every = metrics.cot_scores(preds, references=refs, workers=1, progress=False)
    _, some = metrics.cot_scores(preds[:4], references=refs, workers=1, progress=False)
    keys = ("recall", "precision", "f1", "soft_f1", "answer_as_think_soft_f1", "reference_as_think_soft_f1")
    assert [{k: p[k] for k in keys} for p in some] == [{k: p[k] for k in keys} for p in every[:4]]
    _, own = metrics.cot_scores(preds[:4], workers=1, progress=False)  # the old scale: IDF of the 4 rows only
    assert [p["soft_f1"] for p in own] != [p["soft_f1"] for p in some]
    summary, _ = metrics.cot_scores(preds, workers=1, progress=False)
    same, _ = metrics.cot_scores(preds, references=refs, workers=1, progress=False)
    assert summary["scores"] == same["scores"]  # a complete file: the rows' references are the split's



def test_rows_of_two_models_in_one_file_or_a_mode_file_of_another_model_are_refused(split, tmp_path):
    """A file whose rows name two models, or a <stem>.<mode>.jsonl beside it made by another model, was scored as
    the one model the report names."""
    (tmp_path / "test.jsonl").write_bytes((split / "test.jsonl").read_bytes())
    rows = read_jsonl(split / "predictions_full.jsonl")
    mixed = [dict(r, model="small") if i % 2 else r for i, r in enumerate(rows)]
    _write(tmp_path / "predictions_full.jsonl", mixed)
    args = _args(tmp_path, "full", split / "predictions_base.jsonl", tmp_path / "r")
    proc = run_script("rouge_eval.py", *args, check=False)
    assert_exit(proc, 1, tmp_path / "predictions_full.jsonl", "output/full", "small")
    # the main file is one model's; its no-think file beside it is another's
    _write(tmp_path / "predictions_full.jsonl", rows)
    soft = [dict(r, model="small") for r in rows]
    _write(tmp_path / "predictions_full.no_think_soft.jsonl", soft)
    proc = run_script("evaluate.py", *args, check=False)
    assert_exit(proc, 1, tmp_path / "predictions_full.no_think_soft.jsonl", "output/full", "small",
                "--soft_switch=/no_think", lines=2)  # the file, both models, the command that predicts it again
    assert not (tmp_path / "r").exists()


def test_the_report_names_both_files_when_rouge_and_cot_scored_different_predictions(split, tmp_path):
    """rouge_eval.py on one file and evaluate.py on another, into one results folder: the report showed the two
    sets of scores as one model's, naming one file."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "test.jsonl").write_bytes((split / "test.jsonl").read_bytes())
    _write(other / "predictions_full.jsonl", [dict(r, model="small") for r in read_jsonl(split / "predictions_full.jsonl")])
    results = tmp_path / "results"
    run_script("rouge_eval.py", *_args(other, "full", split / "predictions_base.jsonl", results), "--eval_base=false",
               f"--test_file={split}/test.jsonl")
    run_script("evaluate.py", *_args(split, "full", split / "predictions_base.jsonl", results), "--eval_base=false")
    report = (results / "README.md").read_text(encoding="utf-8")
    assert str(other / "predictions_full.jsonl") in report and str(split / "predictions_full.jsonl") in report
    # the same file scored by both names it once
    again = tmp_path / "again"
    for script in ("rouge_eval.py", "evaluate.py"):
        run_script(script, *_args(split, "full", split / "predictions_base.jsonl", again), "--eval_base=false")
    assert (again / "README.md").read_text(encoding="utf-8").count(str(split / "predictions_full.jsonl")) == 1
