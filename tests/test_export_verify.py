"""export.py --verify=N: llama.cpp (the prebuilt xllamacpp wheel, which CI installs) runs the written file beside
transformers on the same prompts in all three thinking modes, and the report says whether they agree.

The tiny model answers gibberish, so adherence is 0 for both engines here; what these tests prove is the comparison
itself: the f32 file of a full and of a LoRA export gives transformers' greedy tokens and its prompts, a file that
does not run as the model does is reported and fails the export, and a missing llama.cpp is one clear message.
"""

from __future__ import annotations

import json
import sys

import pytest
from oracles import lines_naming, raises_naming

from test_export import adapter_dir, run_export, tiny_dir  # noqa: F401 - module fixtures shared with test_export.py

pytest.importorskip("gguf")

MODES = ("think", "no_think_soft", "no_think_hard")


def read_report(out) -> dict:
    return json.loads((out / "verify.json").read_text(encoding="utf-8"))


def check_exact(report: dict, questions: int) -> None:
    assert report["passed"] and report["exact_required"]
    assert set(report["modes"]) == set(MODES)
    for mode in MODES:
        m = report["modes"][mode]
        assert m == {"identical": questions, "n": questions, "agreement": 1.0, "template_same_tokens": questions}
    for engine in ("transformers", "llama.cpp"):
        assert {mode: report["adherence"][engine][mode]["n"] for mode in MODES} == dict.fromkeys(MODES, questions)
    assert all(r["transformers"] == r["llama.cpp"] and r["compared_tokens"] > 0 for r in report["rows"])
    # the soft switch is in the prompt of that mode only, the hard switch's empty think in its own only
    by_mode = {r["mode"]: r for r in report["rows"]}
    assert len(report["rows"]) == 3 * questions and set(by_mode) == set(MODES)


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_verify_a_full_export(tiny_dir, tmp_path, quant):  # noqa: F811
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    printed = run_export(f"--model_dir={tiny_dir}", f"--output_dir={tmp_path}", "--name=tiny", f"--quantization={quant}",
                         "--verify=2", "--verify_tokens=24")
    report = read_report(tmp_path)
    check_exact(report, 2)
    assert report["tokens"] == 24 and report["questions"] == 2
    for label in ("think-on", "no-think-soft", "no-think-hard"):
        assert lines_naming(printed, f"{label} ", "2/2", "1.00"), printed  # each mode: 2 of 2 identical, agreement 1
    assert "adherence transformers" in printed and "adherence llama.cpp" in printed


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_verify_a_lora_export(adapter_dir, tmp_path, quant):  # noqa: F811
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    run_export(f"--model_dir={adapter_dir}", f"--output_dir={tmp_path}", f"--quantization={quant}", "--verify=2",
               "--verify_tokens=24")
    check_exact(read_report(tmp_path), 2)


def test_verify_reports_a_quantized_file_as_a_share(tiny_dir, tmp_path):  # noqa: F811
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "头痛三天，伴有低烧，怎么办？"}, ensure_ascii=False) + "\n")
    run_export(f"--model_dir={tiny_dir}", f"--output_dir={tmp_path}", "--name=tiny", "--quantization=q8_0",
               "--verify=3", f"--verify_input={questions}")
    report = read_report(tmp_path)
    assert report["questions"] == 1 and report["source"] == str(questions) and not report["exact_required"]
    assert report["passed"]  # q8_0 need not give the same tokens; its prompts must still be the same
    assert all(0 <= report["modes"][m]["agreement"] <= 1 and report["modes"][m]["template_same_tokens"] == 1
               for m in MODES)


def test_verify_fails_a_file_that_does_not_run_as_the_model(tiny_dir, tmp_path):  # noqa: F811
    """The reference is perturbed (as a wrong file would be): the export fails, naming the report, which says so."""
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    import torch
    from transformers import AutoModelForCausalLM

    from medsft.files import MedsftError

    load = AutoModelForCausalLM.from_pretrained

    def perturbed(*args, **kwargs):
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(-1.0)
        return model

    facts = ("--verify", "tiny-f32.gguf", tmp_path / "verify.json", "f32")  # the check, the file, its report, its type
    with pytest.MonkeyPatch.context() as mp, raises_naming(MedsftError, *facts):
        mp.setattr(AutoModelForCausalLM, "from_pretrained", perturbed)
        run_export(f"--model_dir={tiny_dir}", f"--output_dir={tmp_path}", "--name=tiny", "--quantization=f32",
                   "--verify=1")
    report = read_report(tmp_path)
    assert not report["passed"] and not any(r["identical"] for r in report["rows"])


def test_verify_without_llama_cpp_is_one_message_before_writing(tiny_dir, tmp_path):  # noqa: F811
    from medsft.files import MedsftError

    with pytest.MonkeyPatch.context() as mp, raises_naming(MedsftError, "--verify", "pip install xllamacpp"):
        mp.setitem(sys.modules, "xllamacpp", None)  # as if the optional wheel were not installed
        run_export(f"--model_dir={tiny_dir}", f"--output_dir={tmp_path / 'out'}", "--verify=1")
    assert not (tmp_path / "out").exists()


def test_verify_refuses_a_bad_question_file(tiny_dir, tmp_path):  # noqa: F811
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    from medsft.files import MedsftError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"q": 1}\n')
    with raises_naming(MedsftError, bad, "line 2", '"question"'):  # the file, the line, the field it lacks
        run_export(f"--model_dir={tiny_dir}", f"--output_dir={tmp_path / 'out'}", "--quantization=f32", "--verify=2",
                   f"--verify_input={bad}")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_a_verification_never_outlives_the_file_it_checked(tiny_dir, tmp_path):  # noqa: F811
    """verify.json describes the .gguf beside it only: re-exporting without --verify leaves no verify.json."""
    pytest.importorskip("xllamacpp", reason="llama.cpp: pip install xllamacpp")
    args = (f"--model_dir={tiny_dir}", f"--output_dir={tmp_path}", "--name=tiny", "--quantization=f32")
    run_export(*args, "--verify=1", "--verify_tokens=4")
    assert read_report(tmp_path)["passed"]
    run_export(*args, "--license=mit")  # another file at the same path, never checked
    assert (tmp_path / "tiny-f32.gguf").is_file() and not (tmp_path / "verify.json").exists()
