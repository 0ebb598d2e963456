"""evaluate.py, evaluate_lora.py, rouge_eval.py, rouge_eval_lora.py end to end, as a user runs them."""
from __future__ import annotations

import json
import logging
import shlex

import pytest
from conftest import run_script
from oracles import assert_exit, lines_naming, numbers_in

from medsft import report
from medsft.chat import format_reference, split_output
from medsft.files import read_jsonl

SCRIPTS = ("evaluate.py", "evaluate_lora.py", "rouge_eval.py", "rouge_eval_lora.py")


def _pred(i, row, output, model, finished=True, adapter=None):
    think, answer, status = split_output(output)
    p = {"id": f"q{i}", "question": row["question"], "ref_think": row["think"], "ref_answer": row["answer"],
         "output": output, "think": think, "answer": answer, "think_status": status,
         "new_tokens": len(output) // 2, "finished": finished, "model": model}
    if adapter:
        p["adapter"] = adapter
    return p


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_data_path):
    """Prediction files made by hand: full = the reference itself (perfect), base = another question's reference
    (shuffled) with every 5th output empty, LoRA = perfect on odd rows, cut mid-think on even rows."""
    d = tmp_path_factory.mktemp("eval")
    rows = read_jsonl(demo_data_path)
    n = len(rows)
    full = [_pred(i, r, format_reference(r["think"], r["answer"]), "output/full") for i, r in enumerate(rows)]
    base = [_pred(i, r, "" if i % 5 == 0 else format_reference(rows[(i + 7) % n]["think"], rows[(i + 7) % n]["answer"]),
                  "Qwen/Qwen3-1.7B") for i, r in enumerate(rows)]
    lora = [_pred(i, r, format_reference(r["think"], r["answer"]) if i % 2 else "<think>\n" + r["think"][:100],
                  "Qwen/Qwen3-1.7B", finished=bool(i % 2), adapter="output/lora") for i, r in enumerate(rows)]
    for name, preds in (("full", full), ("base", base), ("lora", lora)):
        _write(d / f"predictions_{name}.jsonl", preds)
    (d / "predictions_full.summary.json").write_text(json.dumps(
        {"model": "output/full", "n": n, "max_new_tokens": 2048, "do_sample": True, "temperature": 0.6, "top_p": 0.95,
         "top_k": 20, "seed": 42, "backend": "transformers"}), encoding="utf-8")
    _write(d / "test.jsonl", [{"id": f"q{i}", "question": r["question"], "think": r["think"], "answer": r["answer"]}
                              for i, r in enumerate(rows)])
    return d


def _args(d, tag, results="results"):
    return [f"--predictions={d}/predictions_{tag}.jsonl", f"--base_predictions={d}/predictions_base.jsonl",
            f"--test_file={d}/test.jsonl", f"--results_dir={d}/{results}"]


@pytest.fixture(scope="module")
def results(workdir):
    for script in SCRIPTS:
        tag = "lora" if "lora" in script else "full"
        proc = run_script(script, *_args(workdir, tag))
        assert "Traceback" not in proc.stderr
    return workdir / "results"


def test_every_results_file_and_both_charts(results):
    names = {p.name for p in results.iterdir()}
    expected = {f"{kind}_{tag}.{ext}" for kind in ("rouge", "cot") for tag in ("base", "full", "lora")
                for ext in ("json", "jsonl")}
    expected |= {"rouge.png", "cot.png", "README.md", "evaluate_config.json", "evaluate_lora_config.json",
                 "rouge_eval_config.json", "rouge_eval_lora_config.json"}
    assert expected <= names
    for png in ("rouge.png", "cot.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("rouge", "cot"):
        for tag in ("base", "full", "lora"):
            assert len(read_jsonl(results / f"{kind}_{tag}.jsonl")) == 40


def test_perfect_predictions_score_full_marks(results):
    rouge = json.loads((results / "rouge_full.json").read_text(encoding="utf-8"))
    for view in ("answer", "think", "full"):
        assert rouge["views"][view]["rouge-1"]["f"] == pytest.approx(100, abs=1e-4)
        assert rouge["views"][view]["n_empty"] == 0
    assert rouge["tokenizer"] == "jieba" and rouge["n"] == 40
    assert rouge["versions"]["jieba"] and "clipped" in rouge["definition"]
    assert rouge["rouge_chinese_exclusive"]["views"]["answer"]["rouge-1"]["f"] == pytest.approx(100, abs=1e-4)
    cot = json.loads((results / "cot_full.json").read_text(encoding="utf-8"))
    assert cot["scores"]["recall"] == 1.0 and cot["scores"]["precision"] == 1.0
    assert cot["chance_floor"]["f1"] < 0.35 and cot["baselines"]["chance"] == cot["chance_floor"]
    assert cot["baselines"]["reference_as_think"]["f1"] == 1.0
    assert cot["baselines"]["chance"]["f1"] < cot["baselines"]["answer_as_think"]["f1"] < 1.0
    assert cot["predictions"]["decoding"]["max_new_tokens"] == 2048 and cot["predictions"]["model"] == "output/full"


def test_shuffled_and_empty_predictions(results):
    cot = json.loads((results / "cot_base.json").read_text(encoding="utf-8"))
    assert cot["n_no_think"] == 8  # every 5th of 40 is empty
    assert cot["scores"]["f1"] <= cot["chance_floor"]["f1"] + 0.1
    rouge = json.loads((results / "rouge_base.json").read_text(encoding="utf-8"))
    assert rouge["views"]["answer"]["n_empty"] == 8
    assert rouge["views"]["answer"]["rouge-1"]["f"] < 40
    per = read_jsonl(results / "rouge_base.jsonl")
    assert per[0]["empty"]["answer"] == "prediction" and per[0]["answer"]["rouge-1"]["f"] == 0
    lora = json.loads((results / "cot_lora.json").read_text(encoding="utf-8"))
    assert lora["format"]["unclosed_rate"] == 0.5 and lora["format"]["truncation_rate"] == 0.5
    assert json.loads((results / "rouge_lora.json").read_text(encoding="utf-8"))["views"]["answer"]["n_empty"] == 20


def _jieba_words(text):
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for token in jieba.lcut(text) for w in token.split()]


def test_rouge_equals_rouge_score_on_jieba_words(results, workdir):
    """The summary's headline numbers vs Google's rouge-score fed jieba's words (its tokenizer bypassed), and the
    labelled old numbers vs rouge-chinese itself."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    rouge_chinese = pytest.importorskip("rouge_chinese")

    class Words:
        def tokenize(self, text):
            return text.split(" ") if text else []

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Words())
    names = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
    preds = read_jsonl(workdir / "predictions_base.jsonl")
    totals = {m: {s: 0.0 for s in "prf"} for m in names.values()}
    old = {m: {s: 0.0 for s in "prf"} for m in names.values()}
    for p in preds:
        hyp, ref = " ".join(_jieba_words(p["answer"])), " ".join(_jieba_words(p["ref_answer"]))
        if not hyp:
            continue  # scores 0
        score = scorer.score(ref, hyp)
        for t, m in names.items():
            for s, value in zip("prf", (score[t].precision, score[t].recall, score[t].fmeasure)):
                totals[m][s] += value * 100
        legacy = rouge_chinese.Rouge().get_scores(hyp, ref)[0]
        for m in old:
            for s in "prf":
                old[m][s] += legacy[m][s] * 100
    summary = json.loads((results / "rouge_base.json").read_text(encoding="utf-8"))
    for m in totals:
        for s in "prf":
            assert summary["views"]["answer"][m][s] == pytest.approx(totals[m][s] / len(preds), abs=1e-6)
            assert summary["rouge_chinese_exclusive"]["views"]["answer"][m][s] == pytest.approx(
                old[m][s] / len(preds), abs=1e-9)


def test_report_lists_every_number_and_is_byte_stable(results):
    text = (results / "README.md").read_text(encoding="utf-8")
    for tag, label in (("base", "base (untuned)"), ("full", "full fine-tune"), ("lora", "LoRA")):
        rouge = json.loads((results / f"rouge_{tag}.json").read_text(encoding="utf-8"))
        cot = json.loads((results / f"cot_{tag}.json").read_text(encoding="utf-8"))
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} | ") and "predictions_" in line)
        assert f"| {rouge['n']} |" in row
        assert f"{rouge['views']['answer']['rouge-l']['f']:.2f}" in text
        assert f"{rouge['views']['think']['rouge-2']['r']:.2f}" in text
        assert f"{cot['scores']['soft_f1']:.3f}" in text and f"{cot['chance_floor']['recall']:.3f}" in text
        for name in ("answer_as_think", "reference_as_think"):
            assert f"{cot['baselines'][name]['precision']:.3f}" in text
        old = rouge["rouge_chinese_exclusive"]["views"]["answer"]["rouge-1"]["f"]
        assert f"{old:.2f}" in text
    assert "not medically verified" in text and "Answer-as-think" in text and "clipped" in text
    assert "†" not in text  # every summary was written with this version's definitions
    assert "| 2048 | true | 0.60 | 0.95 | 20 | 42 |" in text
    before = {name: (results / name).read_bytes() for name in ("rouge.png", "cot.png", "README.md")}
    report.build(results)
    assert {name: (results / name).read_bytes() for name in before} == before


def test_report_marks_summaries_of_older_definitions(results, tmp_path):
    """A summary left in RESULTS_DIR by an older version (rouge-chinese sets; CoT matching where a copied step
    could pair with another reference step) is marked, never silently compared with the new numbers."""
    for name in ("rouge_base.json", "rouge_full.json", "cot_base.json", "cot_full.json"):
        summary = json.loads((results / name).read_text(encoding="utf-8"))
        if name.endswith("base.json"):  # as the older version wrote it
            for key in ("definition", "rouge_chinese_exclusive", "copy_similarity"):
                summary.pop(key, None)
        (tmp_path / name).write_text(json.dumps(summary), encoding="utf-8")
    report.build(tmp_path)
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| base (untuned) † |" in text and "| full fine-tune |" in text
    assert text.count("written by an older version") == 2
    assert (tmp_path / "cot.png").read_bytes()[:4] == b"\x89PNG"


def test_help_and_bad_inputs_fail_fast(workdir, tmp_path):
    for script in SCRIPTS:
        proc = run_script(script, "--help")
        assert "--predictions" in proc.stdout and "--results_dir" in proc.stdout
        assert "--max_new_tokens" not in proc.stdout and "--batch_size" not in proc.stdout  # scores only
    cases = [  # a missing predictions file: the exact inference command that makes it, nothing generated
        (["--predictions=" + str(tmp_path / "none.jsonl"), f"--test_file={workdir}/test.jsonl",
          f"--model_dir={tmp_path}/no_model"],
         f"python inference.py --model_dir={tmp_path}/no_model --input={workdir}/test.jsonl "
         f"--output={tmp_path}/none.jsonl"),
        (["--predictions=" + str(tmp_path / "none.jsonl"), f"--test_file={tmp_path}/no_test.jsonl"],
         f"python inference.py --model_dir=output/full --input={tmp_path}/no_test.jsonl "
         f"--output={tmp_path}/none.jsonl"),
        ([f"--predictions={workdir}/predictions_full.jsonl", f"--base_predictions={tmp_path}/nb.jsonl",
          f"--model_dir={tmp_path}"], "--model_dir=<the base model of the run, e.g. Qwen/Qwen3-1.7B> "
                                      f"--input=data/test.jsonl --output={tmp_path}/nb.jsonl"),
        ([f"--predictions={workdir}/predictions_full.jsonl", "--eval_base=false", "--judge=openai",
          f"--test_file={workdir}/test.jsonl", "--judge_api_key_env=MEDSFT_NO_SUCH_KEY"], "MEDSFT_NO_SUCH_KEY"),
        # the key goes over https only (plain http to this machine's loopback alone): refused before scoring
        ([f"--predictions={workdir}/predictions_full.jsonl", "--eval_base=false", "--judge=openai",
          f"--test_file={workdir}/test.jsonl", "--judge_api_key_env=MEDSFT_TEST_JUDGE_KEY",
          "--judge_base_url=http://judge.example/v1"], ("http://judge.example/v1", "https://")),
    ]
    bad = tmp_path / "bad.jsonl"
    good = (workdir / "predictions_full.jsonl").read_text(encoding="utf-8").splitlines()
    broken = json.loads(good[1])
    broken["think_status"] = "maybe"
    bad.write_text(good[0] + "\n" + json.dumps(broken, ensure_ascii=False) + "\n", encoding="utf-8")
    cases.append(([f"--predictions={bad}", "--eval_base=false"], f"{bad}:2: think_status"))
    # predictions of another split (e.g. data.py re-run with another seed) are never scored against this one
    other = tmp_path / "other_test.jsonl"
    other.write_text((workdir / "test.jsonl").read_text(encoding="utf-8").replace('"id": "q3"', '"id": "q3x"'),
                     encoding="utf-8")
    cases.append(([f"--predictions={workdir}/predictions_full.jsonl", "--eval_base=false", f"--test_file={other}"],
                  (f"{workdir}/predictions_full.jsonl", other, "'q3'", "--test_file")))  # the file, the split, the row
    for args, facts in cases:
        proc = run_script("evaluate.py", *args, f"--results_dir={tmp_path}/results", check=False,
                          env={"MEDSFT_TEST_JUDGE_KEY": "sk-x"})
        assert_exit(proc, 1, *(facts if isinstance(facts, tuple) else (facts,)), lines=None)
    assert not (tmp_path / "results").exists()  # nothing written on failure


def test_judge_end_to_end_against_local_server(workdir, tmp_path):
    from test_judge import FakeServer, good_reply

    key = "sk-e2e-never-written"
    with FakeServer(good_reply) as server:
        proc = run_script("evaluate.py", f"--predictions={workdir}/predictions_lora.jsonl", "--eval_base=false",
                          f"--test_file={workdir}/test.jsonl", f"--results_dir={tmp_path}/results", "--judge=openai",
                          f"--judge_base_url={server.url}?token=q-e2e-secret", "--judge_model=fake-judge", "--judge_api_key_env=MEDSFT_TEST_JUDGE_KEY",
                          env={"MEDSFT_TEST_JUDGE_KEY": key})
        assert server.requests and all(auth == f"Bearer {key}" for auth, _ in server.requests)
    summary = json.loads((tmp_path / "results" / "cot_full.json").read_text(encoding="utf-8"))
    judge = summary["judge"]
    assert judge["model"] == "fake-judge" and judge["n_fallback"] == 0
    per = read_jsonl(tmp_path / "results" / "cot_full.jsonl")
    cut = [p for p in per if p["think_status"] == "unclosed"]
    assert cut and all(0 <= p["judge_recall"] <= 1 for p in per)
    assert 0 < judge["recall"] < 1  # the server marks odd reference steps Matched
    assert "LLM judge" in (tmp_path / "results" / "README.md").read_text(encoding="utf-8")
    for path in (tmp_path / "results").iterdir():
        assert key.encode() not in path.read_bytes() and b"q-e2e-secret" not in path.read_bytes(), path
    assert key not in proc.stdout and key not in proc.stderr and "q-e2e-secret" not in proc.stdout
    config = json.loads((tmp_path / "results" / "evaluate_config.json").read_text(encoding="utf-8"))
    assert config["JUDGE_BASE_URL"] == judge["base_url"] == server.url


def test_missing_predictions_stop_with_the_inference_commands_that_make_them(tmp_path, demo_data_path):
    """The eval scripts only score: a missing file stops them with the exact inference.py / inference_lora.py
    command (the run's base model read from its directory), and those commands make files the scripts score."""
    rows = read_jsonl(demo_data_path)[:3]
    _write(tmp_path / "test.jsonl", [{"id": f"q{i}", "question": r["question"], "think": r["think"],
                                      "answer": r["answer"]} for i, r in enumerate(rows)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "train_config.json").write_text(json.dumps({"MODEL": "tiny"}), encoding="utf-8")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}),
                                                          encoding="utf-8")
    test, base = tmp_path / "test.jsonl", tmp_path / "pred_base.jsonl"
    expected = {
        "rouge_eval.py": [f"python inference.py --model_dir=tiny --input={test} --output={base}",
                          f"python inference.py --model_dir={tmp_path}/full --input={test} "
                          f"--output={tmp_path}/pred_full.jsonl"],
        "evaluate_lora.py": [f"python inference.py --model_dir=tiny --input={test} --output={base}",
                             f"python inference_lora.py --adapter_dir={tmp_path}/lora --input={test} "
                             f"--output={tmp_path}/pred_lora.jsonl"],
    }
    for script, commands in expected.items():
        tag = "lora" if "lora" in script else "full"
        run_dir = f"--adapter_dir={tmp_path}/lora" if tag == "lora" else f"--model_dir={tmp_path}/full"
        proc = run_script(script, f"--predictions={tmp_path}/pred_{tag}.jsonl", f"--base_predictions={base}",
                          f"--test_file={test}", f"--results_dir={tmp_path}/results", run_dir, check=False)
        # both missing files, the option that skips the base model, then the command that makes each file
        assert_exit(proc, 1, base, f"{tmp_path}/pred_{tag}.jsonl", "--eval_base=false", lines=1 + len(commands))
        assert [line.strip() for line in proc.stderr.splitlines()[1:]] == commands
        assert "loading" not in proc.stdout and not base.exists() and not (tmp_path / "results").exists()

    # the commands it names make the files (shortened here with greedy decoding); then the script scores them
    base_cmd = expected["rouge_eval.py"][0].split()[2:]
    run_script("inference.py", *base_cmd, "--max_new_tokens=8", "--do_sample=false")
    proc = run_script("rouge_eval.py", f"--predictions={base}", "--eval_base=false", f"--test_file={test}",
                      f"--results_dir={tmp_path}/results")
    assert not [line for line in proc.stdout.splitlines() if line.startswith("warning:")], proc.stdout
    summary = json.loads((tmp_path / "results" / "rouge_full.json").read_text(encoding="utf-8"))
    assert summary["predictions"]["model"] == "tiny" and summary["n"] == 3
    assert summary["predictions"]["decoding"]["max_new_tokens"] == 8

    # interrupted after one row: the evaluation names the command that completes the file with the settings it was
    # started with; it resumes (greedy: the same rows as uninterrupted) and the script then scores all three
    whole = base.read_text(encoding="utf-8").splitlines()
    base.write_text(whole[0] + "\n", encoding="utf-8")
    args = [f"--predictions={base}", "--eval_base=false", f"--test_file={test}", f"--results_dir={tmp_path}/again",
            "--model_dir=tiny", "--workers=1"]
    proc = run_script("evaluate.py", *args, check=False)
    assert_exit(proc, 1, base, test, repr(json.loads(whole[1])["id"]), lines=2)  # the file, its split, a row missing
    command = shlex.split(proc.stderr.splitlines()[-1])
    assert command[:2] == ["python", "inference.py"] and "--max_new_tokens=8" in command
    assert "--do_sample=false" in command and not (tmp_path / "again").exists()
    resumed = run_script(command[1], *command[2:])
    said = lines_naming(resumed.stdout, test, base)  # the counts it names: 3 questions, 1 kept, 2 to predict
    assert len(said) == 1 and numbers_in(said[0], test, base) == [3, 1, 2], resumed.stdout
    assert base.read_text(encoding="utf-8").splitlines() == whole
    run_script("evaluate.py", *args)
    assert json.loads((tmp_path / "again" / "cot_full.json").read_text(encoding="utf-8"))["n"] == 3
