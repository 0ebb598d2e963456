"""ROUGE and offline chain-of-thought metrics (medsft/metrics.py)."""
from __future__ import annotations

import json
import logging
import random

import pytest

from medsft import metrics
from medsft.chat import format_reference
from medsft.io import read_jsonl


def _direct_rouge(hyp: str, ref: str) -> dict:
    """Independent computation: rouge-chinese's own Rouge (its own LCS) on space-joined jieba words, x100."""
    import jieba
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    h = " ".join(w for w in jieba.lcut(hyp) if w.strip())
    r = " ".join(w for w in jieba.lcut(ref) if w.strip())
    score = Rouge().get_scores(h, r)[0]
    return {m: {s: score[m][s] * 100 for s in "prf"} for m in ("rouge-1", "rouge-2", "rouge-l")}


def _pred(rid, ref_think, ref_answer, output=None, finished=True):
    output = format_reference(ref_think, ref_answer) if output is None else output
    from medsft.chat import split_output

    think, answer, status = split_output(output)
    return {"id": rid, "question": "q", "ref_think": ref_think, "ref_answer": ref_answer, "output": output,
            "think": think, "answer": answer, "think_status": status, "new_tokens": len(output),
            "finished": finished, "model": "test"}


@pytest.fixture(scope="module")
def demo_rows(demo_data_path):
    return read_jsonl(demo_data_path)


PAIRS = [
    ("高血压患者应该低盐饮食，每天食盐少于5克。", "高血压患者每天食盐应少于5克，并且规律运动。"),
    ("嗯，用户问的是发热。\n\n首先考虑感染！其次……排除药物热？", "发热首先要考虑感染，其次排除药物热。"),
    ("Aspirin 100 mg qd. 阿司匹林每日一次", "阿司匹林 100 mg，每日一次。Aspirin is an NSAID."),
    ("。。。", "好的。我明白了。"),  # punctuation only: a real (tiny) prediction, scored like rouge-chinese does
    ("他说：“要多喝水。”然后离开了。", "要多喝水。”他说"),
]


# ---------------------------------------------------------------------------------------------------------- ROUGE
@pytest.mark.parametrize("hyp,ref", PAIRS)
def test_rouge_pair_equals_rouge_chinese_on_jieba_words(hyp, ref):
    row = {"id": "x", "output": hyp, "think": "", "answer": hyp, "ref_think": "", "ref_answer": ref}
    summary, per = metrics.rouge_scores([row], workers=1, progress=False)
    expected = _direct_rouge(hyp, ref)
    for m in expected:
        for s in "prf":
            assert per[0]["answer"][m][s] == pytest.approx(expected[m][s], abs=1e-9)
    assert summary["tokenizer"] == "jieba" and summary["n"] == 1
    assert set(summary["versions"]) == {"rouge-chinese", "jieba"}


def test_rouge_rows_equal_independent_computation_every_view(demo_rows):
    # shuffled references: realistic, partly overlapping long texts; compared with the library's own (slow) LCS
    rows = demo_rows[:6]
    preds = [_pred(str(i), r["think"], r["answer"],
                   output=format_reference(rows[(i + 1) % 6]["think"], rows[(i + 1) % 6]["answer"]))
             for i, r in enumerate(rows)]
    summary, per = metrics.rouge_scores(preds, workers=2, progress=False)
    for p, item in zip(preds, per):
        assert item["id"] == p["id"]  # order kept across processes
        views = {"answer": (p["answer"], p["ref_answer"]), "think": (p["think"], p["ref_think"]),
                 "full": (p["think"] + "\n" + p["answer"], p["ref_think"] + "\n" + p["ref_answer"])}
        for view, (h, r) in views.items():
            expected = _direct_rouge(h, r)
            for m in expected:
                for s in "prf":
                    assert item[view][m][s] == pytest.approx(expected[m][s], abs=1e-9), (view, m, s)
    mean_f = sum(item["answer"]["rouge-1"]["f"] for item in per) / len(per)
    assert summary["views"]["answer"]["rouge-1"]["f"] == pytest.approx(mean_f)


def test_rouge_perfect_prediction_scores_100_and_workers_agree(demo_rows):
    preds = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(demo_rows[:8])]
    s2, per2 = metrics.rouge_scores(preds, workers=2, progress=False)
    s1, per1 = metrics.rouge_scores(preds, workers=1, fast_lcs=False, progress=False)
    for view in metrics.ROUGE_VIEWS:
        for m in metrics.ROUGE_METRICS:
            assert s2["views"][view][m]["f"] == pytest.approx(100, abs=1e-4)
            assert s2["views"][view][m]["p"] == pytest.approx(100)
        assert s2["views"][view]["n_empty"] == 0
    assert per1 == per2 and s1["views"] == s2["views"]


def test_rouge_empty_and_whitespace_predictions_score_zero_and_are_counted(demo_rows):
    r = demo_rows[0]
    preds = [_pred("empty", r["think"], r["answer"], output=""),
             _pred("blank", r["think"], r["answer"], output="  \n\n \t"),
             _pred("unclosed", r["think"], r["answer"], output="<think>\n" + r["think"][:50], finished=False),
             _pred("ok", r["think"], r["answer"])]
    summary, per = metrics.rouge_scores(preds, workers=1, progress=False)
    views = summary["views"]
    assert views["answer"]["n_empty"] == 3  # unclosed think: no answer at all
    assert views["think"]["n_empty"] == 2
    assert views["full"]["n_empty"] == 2
    for item in per[:2]:
        assert item["empty"] == {"answer": "prediction", "think": "prediction", "full": "prediction"}
        assert all(item[v][m][s] == 0 for v in metrics.ROUGE_VIEWS for m in metrics.ROUGE_METRICS for s in "prf")
    assert per[2]["think"]["rouge-1"]["p"] == pytest.approx(100)  # a prefix of the reference think
    # zeros are averaged in, not skipped: the answer view is the perfect sample's 100 over 4 samples
    assert views["answer"]["rouge-1"]["p"] == pytest.approx(25)
    # empty reference side: counted as well
    s, per = metrics.rouge_scores([{"id": "r", "output": "答案", "think": "", "answer": "答案", "ref_think": "",
                                    "ref_answer": "  "}], workers=1, progress=False)
    assert per[0]["empty"]["answer"] == "reference" and s["views"]["answer"]["n_empty"] == 1


def test_lcs_length_equals_library_and_handles_long_inputs():
    from rouge_chinese.rouge_score import _len_lcs

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert metrics.lcs_length(a, b) == _len_lcs(a, b)
    # long: the library's dict table would hold 36M cells; compare with a plain two-row DP instead
    a = [rng.choice(["甲", "乙", "丙", "丁", "戊"] * 3 + ["x%d" % i for i in range(50)]) for _ in range(6000)]
    b = a[::2] + [rng.choice("xyz") for _ in range(1000)]
    prev = [0] * (len(b) + 1)
    for ta in a[:1500]:
        cur = [0]
        for j, tb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ta == tb else max(prev[j], cur[j - 1]))
        prev = cur
    assert metrics.lcs_length(a[:1500], b) == prev[-1]
    assert metrics.lcs_length(a, a) == len(a)


# ---------------------------------------------------------------------------------------------------- step splitter
@pytest.mark.parametrize("text,steps", [
    ("剂量为2.5mg，每天两次。体温升到39.5度时就医！", ["剂量为2.5mg，每天两次。", "体温升到39.5度时就医！"]),
    ("血压为120. 然后继续观察病情变化", ["血压为120.", "然后继续观察病情变化"]),
    ("1. 休息并补充水分\n2、药物治疗如布洛芬\n（3）随访观察三天\n(4) 复查血常规\n一、二级预防很重要",
     ["休息并补充水分", "药物治疗如布洛芬", "随访观察三天", "复查血常规", "二级预防很重要"]),
    ("- 注意清淡饮食\n* 定期复查肝功\n• 戒烟限酒为主", ["注意清淡饮食", "定期复查肝功", "戒烟限酒为主"]),
    ("可能是感染……也可能是肿瘤...需要进一步检查", ["可能是感染……", "也可能是肿瘤...", "需要进一步检查"]),
    ("这是第一步的分析。是的。对。然后是第二步分析", ["这是第一步的分析。是的。对。", "然后是第二步分析"]),
    ("嗯。用户问的是头痛的原因", ["嗯。用户问的是头痛的原因"]),  # a short first piece joins the next step
    ("方案：1. 多休息；2. 多饮水。", ["方案：1. 多休息；多饮水。"]),
    ("Fever is common. It resolves in 3.5 days; rest well! Ok.",
     ["Fever is common.", "It resolves in 3.5 days;", "rest well! Ok."]),
    ("……\n---\n", []),
    ("", []),
    ("好的", ["好的"]),
])
def test_split_steps(text, steps):
    assert metrics.split_steps(text) == steps


# ------------------------------------------------------------------------------------------------------- similarity
def test_similarity_properties(demo_rows):
    idf = metrics.Idf([r["think"] + "\n" + r["answer"] for r in demo_rows])
    a, b = "高血压患者应该低盐饮食", "糖尿病患者需要监测血糖"
    assert metrics.text_similarity(a, a, idf) == pytest.approx(1.0)
    assert metrics.text_similarity(a, b, idf) == pytest.approx(metrics.text_similarity(b, a, idf))
    assert 0 < metrics.text_similarity(a, b, idf) < 0.5  # only "患者" shared
    assert metrics.text_similarity("高血压", "肺结核", idf) == 0.0
    assert metrics.text_similarity("高血压，低盐！", "高血压低盐", idf) == pytest.approx(1.0)  # punctuation ignored
    # IDF: sharing a bigram that every document uses counts less than sharing a rare one
    docs = ["患者发热", "患者咳嗽", "患者头痛", "患者腹泻"]
    idf2 = metrics.Idf(docs)
    common = metrics.text_similarity("患者发热", "患者头晕", idf2)  # share 患者 (in every doc)
    rare = metrics.text_similarity("患者发热", "发热头晕", idf2)  # share 发热 (in one doc)
    assert rare > common


def test_derangement_is_fixed_and_has_no_fixed_point():
    for n in (2, 3, 10, 240):
        p = metrics.derangement(n, 0)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
        assert p == metrics.derangement(n, 0)
    assert metrics.derangement(50, 0) != metrics.derangement(50, 1)


# --------------------------------------------------------------------------------------------------- CoT properties
def test_cot_identical_is_one_and_shuffled_is_near_floor(demo_rows):
    perfect = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(demo_rows)]
    s, per = metrics.cot_scores(perfect, progress=False)
    for k in metrics.SCORE_KEYS:
        assert s["scores"][k] == pytest.approx(1.0)
    assert s["n_no_think"] == 0 and s["n"] == len(demo_rows)
    floor = s["chance_floor"]
    assert floor["recall"] < 0.35 and floor["precision"] < 0.35
    assert all(item["floor_reference"] != item["id"] for item in per)

    rng = random.Random(3)
    order = metrics.derangement(len(demo_rows), 7)
    shuffled = [_pred(str(i), r["think"], r["answer"],
                      output=format_reference(demo_rows[order[i]]["think"], demo_rows[order[i]]["answer"]))
                for i, r in enumerate(demo_rows)]
    rng.shuffle(shuffled)
    s2, _ = metrics.cot_scores(shuffled, progress=False)
    for k in ("recall", "precision", "f1"):
        assert s2["scores"][k] < 0.35
        assert s2["scores"][k] <= s2["chance_floor"][k] + 0.1
        assert s2["scores"][k] < 0.5 * s["scores"][k]


def test_cot_subset_of_reference_steps_has_full_precision_and_partial_recall(demo_rows):
    preds = []
    for i, r in enumerate(demo_rows):
        steps = metrics.split_steps(r["think"])
        assert len(steps) >= 3, "demo rows have multi-step reasoning"
        preds.append(_pred(str(i), r["think"], r["answer"], output=format_reference("\n".join(steps[:2]), r["answer"])))
    s, per = metrics.cot_scores(preds, progress=False)
    assert s["scores"]["precision"] == pytest.approx(1.0)
    assert s["scores"]["recall"] < 0.95
    assert s["scores"]["soft_recall"] < s["scores"]["soft_precision"]
    assert all(item["n_gen_steps"] == 2 for item in per)


def test_cot_no_think_scores_zero_and_is_counted(demo_rows):
    r = demo_rows[0]
    preds = [_pred("absent", r["think"], r["answer"], output=r["answer"]),
             _pred("empty", r["think"], r["answer"], output=""),
             _pred("ok", r["think"], r["answer"])]
    s, per = metrics.cot_scores(preds, progress=False)
    assert s["n_no_think"] == 2
    assert per[0]["no_think"] and per[1]["no_think"] and not per[2]["no_think"]
    for item in per[:2]:
        assert all(item[k] == 0 for k in metrics.SCORE_KEYS)
    assert s["scores"]["recall"] == pytest.approx(1 / 3)
    assert s["format"]["absent_rate"] == pytest.approx(2 / 3)


def test_format_stats_and_repeated_steps(demo_rows):
    r = demo_rows[1]
    step = metrics.split_steps(r["think"])[0]
    looping = "\n".join([step] * 4)
    preds = [_pred("loop", r["think"], r["answer"], output=format_reference(looping, r["answer"])),
             _pred("cut", r["think"], r["answer"], output="<think>\n" + r["think"][:60], finished=False),
             _pred("absent", r["think"], r["answer"], output=r["answer"]),
             _pred("ok", r["think"], r["answer"])]
    s, per = metrics.cot_scores(preds, progress=False)
    f = s["format"]
    assert (f["closed_rate"], f["unclosed_rate"], f["absent_rate"]) == (0.5, 0.25, 0.25)
    assert f["truncation_rate"] == 0.25
    assert per[0]["repeated_steps"] == 3
    total = sum(item["n_gen_steps"] for item in per)
    assert f["repeated_step_share"] == pytest.approx((3 + sum(i["repeated_steps"] for i in per[1:])) / total)
    expected_len = (len(looping) + len(r["think"][:60].strip()) + 0 + len(r["think"].strip())) / 4
    assert f["mean_think_chars"] == pytest.approx(expected_len)


def test_real_rows_perfect_and_floor(sample_rows_path):
    rows = [json.loads(line) for line in sample_rows_path.read_text(encoding="utf-8").splitlines()[:40]]
    preds = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(rows)]
    s, _ = metrics.cot_scores(preds, progress=False)
    assert s["scores"]["recall"] == pytest.approx(1.0) and s["scores"]["precision"] == pytest.approx(1.0)
    assert s["chance_floor"]["recall"] < 0.1  # real reasoning of other questions rarely matches at tau 0.2
    assert 10 < s["format"]["mean_ref_steps"] < 60
