"""ROUGE (medsft/rouge.py), reasoning steps (medsft/think_steps.py) and chain-of-thought scores (medsft/cot.py)."""
from __future__ import annotations

import json
import logging
import random

import metrics_ns as metrics
import pytest

from medsft import rouge, think_steps as steps
from medsft.chat import format_reference
from medsft.files import read_jsonl


def _words(text: str) -> list[str]:
    """jieba's own segmentation (not the project's), whitespace dropped."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for token in jieba.lcut(text) for w in token.split()]


class _SpaceTokenizer:
    """Hands rouge-score the project's jieba words unchanged (its default tokenizer drops non-ASCII text)."""

    def tokenize(self, text):
        return text.split(" ") if text else []


def _rouge_score(hyp_words, ref_words, types=("rouge1", "rouge2", "rougeL")) -> dict:
    """Independent computation: Google's rouge-score (ROUGE-1.5.5's definition) on the same words, x100."""
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    names = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=_SpaceTokenizer())
    score = scorer.score(" ".join(ref_words), " ".join(hyp_words))  # score(target, prediction)
    return {names[t]: {"p": score[t].precision * 100, "r": score[t].recall * 100, "f": score[t].fmeasure * 100}
            for t in types}


def _direct_rouge_chinese(hyp: str, ref: str) -> dict:
    """rouge-chinese's own Rouge (exclusive n-gram sets, its own LCS) on space-joined jieba words, x100."""
    rouge_chinese = pytest.importorskip("rouge_chinese")
    score = rouge_chinese.Rouge().get_scores(" ".join(_words(hyp)), " ".join(_words(ref)))[0]
    return {m: {s: score[m][s] * 100 for s in "prf"} for m in ("rouge-1", "rouge-2", "rouge-l")}


def _assert_scores(got: dict, expected: dict, tol: float, where=""):
    for m in expected:
        for s in "prf":
            assert got[m][s] == pytest.approx(expected[m][s], abs=tol), (where, m, s)


def _pred(rid, ref_think, ref_answer, output=None, finished=True):
    output = format_reference(ref_think, ref_answer) if output is None else output
    from medsft.chat import split_output

    think, answer, status = split_output(output)
    return {"id": rid, "question": "q", "ref_think": ref_think, "ref_answer": ref_answer, "output": output,
            "think": think, "answer": answer, "think_status": status, "new_tokens": len(output),
            "finished": finished, "model": "test"}


@pytest.fixture(scope="module")
def sample_rows(sample_rows_path):
    return [json.loads(line) for line in sample_rows_path.read_text(encoding="utf-8").splitlines()]


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
def test_rouge_pair_equals_rouge_score_on_the_same_words(hyp, ref):
    row = {"id": "x", "output": hyp, "think": "", "answer": hyp, "ref_think": "", "ref_answer": ref}
    summary, per = metrics.rouge_scores([row], workers=1, progress=False)
    _assert_scores(per[0]["answer"], _rouge_score(_words(hyp), _words(ref)), 1e-6)
    assert summary["tokenizer"] == "jieba" and summary["n"] == 1
    assert set(summary["versions"]) == {"jieba"} and "clipped" in summary["definition"]


@pytest.mark.parametrize("hyp,ref", PAIRS)
def test_rouge_chinese_exclusive_numbers_are_rouge_chinese(hyp, ref):
    row = {"id": "x", "output": hyp, "think": "", "answer": hyp, "ref_think": "", "ref_answer": ref}
    summary, _ = metrics.rouge_scores([row], workers=1, progress=False)
    _assert_scores(summary["rouge_chinese_exclusive"]["views"]["answer"], _direct_rouge_chinese(hyp, ref), 1e-9)


def test_segment_is_jieba(sample_rows):
    texts = [r[k] for r in sample_rows for k in ("think", "answer", "question")]
    texts += ["Hello world 2.5mg/kg\r\n测试 abc-def 1,000 ＡＢＣ\u3000全角\t空格", "", "  \n", "x", "你好",
              "C++ & C# 100% a.b.c ……", "\u00a0中\u2028文", "剂量为2.5mg，每天两次！ＣＴ示：肺炎"]
    assert [metrics.segment(t) for t in texts] == [_words(t) for t in texts]


def test_whole_output_words_are_think_and_answer_words(sample_rows):
    # the full view reuses the think's and answer's words: only valid when jieba would cut the whole the same way
    for r in sample_rows[:30]:
        row = _pred("x", r["think"], r["answer"])
        fast = rouge._score_rows([rouge.rouge_texts(row)])[0]["full"][0]
        full = metrics.THINK_TAGS.sub("\n", row["output"])
        expected = metrics.pair_scores(metrics.segment(full), metrics.segment(r["think"] + "\n" + r["answer"]))
        _assert_scores(fast, expected, 0)
    # text outside the think tags: segmented as it is
    row = _pred("x", "想一想。", "答案是A。", output="前言<think>想一想。</think>答案是A。")
    got = rouge._score_rows([rouge.rouge_texts(row)])[0]["full"][0]
    _assert_scores(got, metrics.pair_scores(metrics.segment("前言\n想一想。\n答案是A。"),
                                            metrics.segment("想一想。\n答案是A。")), 0)


def test_rouge_real_rows_equal_rouge_score(sample_rows):
    """Every view of 200 real rows, each scored against another row's reference, vs rouge-score on the same words.

    rouge-score's ROUGE-L is a pure-Python O(n*m) table (~0.3 s per reasoning pair), so ROUGE-L of the think and
    whole-output views is compared on 12 rows; everything else on all 200."""
    n = len(sample_rows)
    preds = [_pred(str(i), r["think"], r["answer"],
                   output=format_reference(sample_rows[(i + 1) % n]["think"], sample_rows[(i + 1) % n]["answer"]))
             for i, r in enumerate(sample_rows)]
    summary, per = metrics.rouge_scores(preds, workers=2, progress=False)
    for i, (p, item) in enumerate(zip(preds, per)):
        assert item["id"] == p["id"]  # order kept across processes
        views = {"answer": (p["answer"], p["ref_answer"]), "think": (p["think"], p["ref_think"]),
                 "full": (p["think"] + "\n" + p["answer"], p["ref_think"] + "\n" + p["ref_answer"])}
        for view, (h, r) in views.items():
            types = ("rouge1", "rouge2", "rougeL") if view == "answer" or i < 12 else ("rouge1", "rouge2")
            _assert_scores(item[view], _rouge_score(_words(h), _words(r), types), 1e-6, (i, view))
    mean_f = sum(item["answer"]["rouge-1"]["f"] for item in per) / len(per)
    assert summary["views"]["answer"]["rouge-1"]["f"] == pytest.approx(mean_f)


def test_rouge_repetition_divides_precision(demo_rows):
    """An answer repeated k times: clipped counts divide its precision by ~k (rouge-chinese's sets did not)."""
    k = 5
    preds = [_pred(str(i), r["think"], r["answer"], output=format_reference(r["think"], "\n".join([r["answer"]] * k)))
             for i, r in enumerate(demo_rows[:10])]
    summary, per = metrics.rouge_scores(preds, workers=1, progress=False)
    for p, item in zip(preds, per):
        n_words = len(metrics.segment(p["ref_answer"]))
        a = item["answer"]
        assert a["rouge-1"]["p"] == pytest.approx(100 / k) and a["rouge-1"]["r"] == pytest.approx(100)
        assert a["rouge-l"]["p"] == pytest.approx(100 / k) and a["rouge-l"]["r"] == pytest.approx(100)
        assert a["rouge-2"]["p"] == pytest.approx(100 * (n_words - 1) / (k * n_words - 1))
        _assert_scores(a, _rouge_score(metrics.segment(p["answer"]), metrics.segment(p["ref_answer"])), 1e-6)
    assert summary["views"]["answer"]["rouge-1"]["f"] == pytest.approx(100 / 3)  # 2 * 0.2 * 1 / 1.2
    old = summary["rouge_chinese_exclusive"]["views"]["answer"]
    assert old["rouge-1"]["p"] == pytest.approx(100) and old["rouge-1"]["f"] == pytest.approx(100, abs=1e-4)


def test_rouge_copying_the_question_scores_low(sample_rows):
    preds = [_pred(str(i), r["think"], r["answer"], output=format_reference(r["question"], r["question"]))
             for i, r in enumerate(sample_rows[:60])]
    summary, _ = metrics.rouge_scores(preds, workers=1, progress=False)
    answer = summary["views"]["answer"]
    assert answer["rouge-1"]["r"] < 25 and answer["rouge-1"]["f"] < 35 and answer["rouge-l"]["f"] < 25
    assert summary["views"]["think"]["rouge-1"]["r"] < 15


def test_rouge_perfect_prediction_scores_100_and_workers_agree(demo_rows):
    preds = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(demo_rows[:24])]
    s2, per2 = metrics.rouge_scores(preds, workers=2, progress=False)
    s1, per1 = metrics.rouge_scores(preds, workers=1, progress=False)
    for view in metrics.ROUGE_VIEWS:
        for m in metrics.ROUGE_METRICS:
            for st in metrics.ROUGE_STATS:
                assert s2["views"][view][m][st] == pytest.approx(100)
        assert s2["views"][view]["n_empty"] == 0
    assert per1 == per2 and s1 == s2


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
    assert summary["rouge_chinese_exclusive"]["views"]["answer"]["rouge-1"]["p"] == pytest.approx(25)
    # empty reference side: counted as well
    s, per = metrics.rouge_scores([{"id": "r", "output": "答案", "think": "", "answer": "答案", "ref_think": "",
                                    "ref_answer": "  "}], workers=1, progress=False)
    assert per[0]["empty"]["answer"] == "reference" and s["views"]["answer"]["n_empty"] == 1


def test_rouge_text_before_an_unclosed_think_is_no_answer(demo_rows):
    """An opening <think> never closed is a think cut off: text before it is no answer, even when it is the
    reference answer itself, in predictions split today and in files written when the prefix was the answer."""
    r = demo_rows[0]
    output = r["answer"] + "<think>\n" + r["think"][:50]
    fresh = _pred("fresh", r["think"], r["answer"], output=output, finished=False)
    stale = {**fresh, "id": "stale", "answer": r["answer"]}  # as an older split_output stored it
    summary, per = metrics.rouge_scores([fresh, stale], workers=1, progress=False)
    assert fresh["think_status"] == "unclosed" and fresh["answer"] == ""
    assert summary["views"]["answer"]["n_empty"] == 2
    for item in per:
        assert item["empty"].get("answer") == "prediction"
        assert all(item["answer"][m][s] == 0 for m in metrics.ROUGE_METRICS for s in "prf")


def _dp_lcs(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for ta in a:
        cur = [0]
        for j, tb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ta == tb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def test_lcs_length_equals_dynamic_programme_and_handles_long_inputs():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert metrics.lcs_length(a, b) == _dp_lcs(a, b) == metrics.lcs_length(b, a)
    a = [rng.choice(["甲", "乙", "丙", "丁", "戊"] * 3 + ["x%d" % i for i in range(50)]) for _ in range(6000)]
    b = a[::2] + [rng.choice("xyz") for _ in range(1000)]
    assert metrics.lcs_length(a[:1500], b) == _dp_lcs(a[:1500], b)
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


def test_content_chars_fast_path_is_the_definition():
    """content_chars takes two shortcuts: NFC(NFKD(x)) for NFKC(x), and Python's \\w minus "_" for Unicode
    categories L* and N*. Both are checked on every code point (and NFKC on real text)."""
    import unicodedata

    for i in range(0x110000):
        c = chr(i)
        assert bool(steps._NOT_CONTENT.fullmatch(c)) != (unicodedata.category(c)[0] in "LN"), hex(i)
        if 0xD800 <= i < 0xE000:
            continue
        assert unicodedata.normalize("NFC", unicodedata.normalize("NFKD", c)) == unicodedata.normalize("NFKC", c)
    text = "血压１２０／８０ｍｍＨｇ，体温39.5℃；Ⅱ型糖尿病。ＣＴ示：“肺炎”！ﬁ Straße é"
    expected = "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if unicodedata.category(c)[0] in "LN")
    assert metrics.content_chars(text) == expected


def test_similarity_matrix_equals_pairwise_similarity(demo_rows):
    docs = [r["think"] + "\n" + r["answer"] for r in demo_rows]
    slow, fast = metrics.Idf(docs), metrics.BigramIdf(docs)
    texts = ["哈哈哈哈哈哈。哈哈。", "好", "ＡＢＣ abc ABC！", demo_rows[0]["think"], demo_rows[1]["answer"],
             demo_rows[2]["think"][:200] + "未见过的词汇：氪金羰基。"]
    for x in texts:
        for y in texts:
            a, b = metrics.split_steps(x), metrics.split_steps(y)
            got = metrics.similarity_matrix(metrics.StepSet(a, fast), metrics.StepSet(b, fast))
            assert got.shape == (len(a), len(b))
            for i, sa in enumerate(a):
                for j, sb in enumerate(b):
                    assert got[i, j] == pytest.approx(metrics.text_similarity(sa, sb, slow), abs=1e-12)


def _sequential_greedy(sim) -> list[float]:
    """The definition: pairs by decreasing similarity (ties: lower row, then column), each row and column once."""
    pairs = sorted(((-sim[i][j], i, j) for i in range(len(sim)) for j in range(len(sim[0])) if sim[i][j] > 0))
    rows, cols, out = set(), set(), []
    for neg, i, j in pairs:
        if i not in rows and j not in cols:
            rows.add(i)
            cols.add(j)
            out.append(-neg)
    return sorted(out)


def test_one_to_one_is_greedy_matching():
    import numpy as np

    rng = random.Random(1)
    for _ in range(400):
        n, m = rng.randint(0, 7), rng.randint(0, 7)
        sim = [[round(rng.random(), 1) * (rng.random() < 0.7) for _ in range(m)] for _ in range(n)]  # many ties
        got = metrics.one_to_one(np.array(sim, dtype=float).reshape(n, m))
        assert sorted(got.tolist()) == _sequential_greedy(sim)
    # a copied step matches once: three identical generated steps, one reference step
    assert metrics.one_to_one(np.array([[1.0], [1.0], [1.0]])).tolist() == [1.0]


# --------------------------------------------------------------------------------------------------- CoT properties
def test_cot_identical_is_one_and_shuffled_is_near_chance(demo_rows):
    perfect = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(demo_rows)]
    s, per = metrics.cot_scores(perfect, progress=False)
    for k in metrics.SCORE_KEYS:
        assert s["scores"][k] == pytest.approx(1.0)
        assert s["baselines"]["reference_as_think"][k] == pytest.approx(1.0)
    assert s["n_no_think"] == 0 and s["n"] == len(demo_rows)
    floor = s["chance_floor"]
    assert s["baselines"]["chance"] == floor
    assert floor["recall"] < 0.35 and floor["precision"] < 0.35
    assert all(item["floor_reference"] != item["id"] for item in per)
    assert s["matching"] == metrics.MATCHING

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
    # the baselines that do not depend on the prediction are the same for both files
    for name in ("answer_as_think", "reference_as_think"):
        assert s2["baselines"][name] == pytest.approx(s["baselines"][name])


def test_cot_workers_agree(sample_rows, monkeypatch):
    """Rows are scored along the cycles of the chance permutation, in chunks spread over processes: neither the
    chunking nor the process count may change a number."""
    from medsft import cot

    n = len(sample_rows)
    preds = [_pred(str(i), r["think"], r["answer"],
                   output=format_reference(sample_rows[(i * 7) % n]["think"], r["answer"]) if i % 3 else None)
             for i, r in enumerate(sample_rows)]
    s1, per1 = metrics.cot_scores(preds, workers=1, progress=False)
    monkeypatch.setattr(cot, "MIN_ROWS_FOR_WORKERS", 0)
    s2, per2 = metrics.cot_scores(preds, workers=2, progress=False)
    assert per1 == per2 and s1 == s2
    assert [item["id"] for item in per2] == [p["id"] for p in preds]


def test_cot_looping_counts_against_precision(demo_rows):
    """A think repeated k times: every reference step is covered (recall 1) but only one copy matches."""
    for k in (2, 4):
        preds = [_pred(str(i), r["think"], r["answer"], output=format_reference("\n".join([r["think"]] * k),
                                                                                r["answer"]))
                 for i, r in enumerate(demo_rows)]
        s, per = metrics.cot_scores(preds, progress=False)
        assert s["scores"]["recall"] == pytest.approx(1.0)
        assert s["scores"]["precision"] == pytest.approx(1 / k)
        assert s["scores"]["f1"] == pytest.approx(2 / (k + 1))
        assert s["scores"]["soft_precision"] == pytest.approx(1 / k)
        assert s["format"]["repeated_step_share"] >= (k - 1) / k
    # one step said again and again
    r = demo_rows[1]
    step = metrics.split_steps(r["think"])[0]
    n_ref = len(metrics.split_steps(r["think"]))
    s, per = metrics.cot_scores([_pred("loop", r["think"], r["answer"],
                                       output=format_reference("\n".join([step] * 10), r["answer"]))], progress=False)
    assert per[0]["precision"] == pytest.approx(1 / 10) and per[0]["recall"] == pytest.approx(1 / n_ref)


def _said_k_times(preds_once: list[dict], k: int) -> list[dict]:
    return [_pred(p["id"], p["ref_think"], p["ref_answer"],
                  output=format_reference("\n".join([p["think"]] * k), p["ref_answer"])) for p in preds_once]


def _assert_copies_never_pay(preds_once: list[dict], ks=(2, 3)):
    """Under one-to-one matching a copy of a step is no new step: saying a think k times keeps every match of saying
    it once and adds k - 1 unmatched copies, so recall stays and precision (hard and soft) is divided by k."""
    _, once = metrics.cot_scores(preds_once, progress=False)
    for k in ks:
        _, again = metrics.cot_scores(_said_k_times(preds_once, k), progress=False)
        for a, b in zip(once, again):
            assert b["n_gen_steps"] == k * a["n_gen_steps"]
            assert b["recall"] == pytest.approx(a["recall"]) and b["soft_recall"] == pytest.approx(a["soft_recall"])
            assert b["precision"] == pytest.approx(a["precision"] / k)
            assert b["soft_precision"] == pytest.approx(a["soft_precision"] / k)
            assert b["f1"] < a["f1"] or a["f1"] == b["f1"] == 0


def test_cot_saying_a_step_twice_never_matches_a_second_reference_step():
    # one generated step close to two reference steps: said twice, its copy must not claim the second one
    ref = "高血压患者应当低盐饮食。\n高血压患者应当规律运动。\n糖尿病患者需要控制血糖。"
    once = [_pred("x", ref, "控制血压。", output=format_reference("高血压患者应当低盐饮食，并且规律运动。", "控制血压。"))]
    s, _ = metrics.cot_scores(once, progress=False)
    assert s["scores"]["recall"] == pytest.approx(1 / 3) and s["scores"]["precision"] == 1.0
    _assert_copies_never_pay(once, ks=(2, 3, 5))


def test_cot_repeating_real_thinks_never_pays(sample_rows):
    """Real rows: the reference answer, and the first half of the reference steps, said once or k times."""
    answers = [_pred(str(i), r["think"], r["answer"], output=format_reference(r["answer"], r["answer"]))
               for i, r in enumerate(sample_rows)]
    _assert_copies_never_pay(answers)
    halves = []
    for i, r in enumerate(sample_rows):
        steps = metrics.split_steps(r["think"])
        halves.append(_pred(str(i), r["think"], r["answer"],
                            output=format_reference("\n".join(steps[:(len(steps) + 1) // 2]), r["answer"])))
    _assert_copies_never_pay(halves, ks=(2,))


def test_cot_copying_the_answer_or_question_is_not_rewarded(sample_rows):
    rows = sample_rows[:80]
    preds = [_pred(str(i), r["think"], r["answer"], output=format_reference(r["answer"], r["answer"]))
             for i, r in enumerate(rows)]
    s, per = metrics.cot_scores(preds, progress=False)
    answer = s["baselines"]["answer_as_think"]
    # precision is measured against the reference think only: restating the answer is not precision 1.0
    assert answer["precision"] < 0.9 and answer["recall"] < 0.3 and answer["f1"] < 0.4
    assert s["scores"] == pytest.approx(answer)  # a model that copies its answer into the think scores the baseline
    assert all(item["answer_as_think_f1"] == pytest.approx(item["f1"]) for item in per)
    question = [_pred(str(i), r["think"], r["answer"], output=format_reference(r["question"], r["answer"]))
                for i, r in enumerate(rows)]
    s, _ = metrics.cot_scores(question, progress=False)
    assert s["scores"]["recall"] < 0.1 and s["scores"]["f1"] < 0.2


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
        assert all(item[k] == 0 and item["floor_" + k] == 0 for k in metrics.SCORE_KEYS)
        assert item["reference_as_think_f1"] == pytest.approx(1.0)  # baselines do not depend on the prediction
    assert s["scores"]["recall"] == pytest.approx(1 / 3)
    assert s["format"]["absent_rate"] == pytest.approx(2 / 3)
    one, _ = metrics.cot_scores(preds[2:], progress=False)  # a single row has no other row to be chance
    assert one["chance_floor"] is None and one["baselines"]["chance"] is None and one["scores"]["f1"] == 1.0
    none, _ = metrics.cot_scores([], progress=False)
    assert none["n"] == 0 and none["scores"]["f1"] == 0.0


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


def test_real_rows_perfect_baselines_and_chance(sample_rows):
    rows = sample_rows[:40]
    preds = [_pred(str(i), r["think"], r["answer"]) for i, r in enumerate(rows)]
    s, per = metrics.cot_scores(preds, progress=False)
    assert s["scores"]["recall"] == pytest.approx(1.0) and s["scores"]["precision"] == pytest.approx(1.0)
    assert s["chance_floor"]["recall"] < 0.1  # real reasoning of other questions rarely matches at tau 0.2
    assert 10 < s["format"]["mean_ref_steps"] < 60
    b = s["baselines"]
    assert b["chance"]["f1"] < b["answer_as_think"]["f1"] < b["reference_as_think"]["f1"] == pytest.approx(1.0)
    # the chance baseline pairs each row with the reference its fixed permutation names
    perm = metrics.derangement(len(rows), 0)
    assert [item["floor_reference"] for item in per] == [str(perm[i]) for i in range(len(rows))]
