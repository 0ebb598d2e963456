"""data.py end to end: real rows, planted bad lines, other formats, determinism, fail-fast errors."""

import json
import runpy
import sys

import pytest
from conftest import run_script
from oracles import assert_exit, lines_naming, raises_naming

from medsft import models
from medsft.files import MedsftError


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def splits(d):
    return {name: read(d / f"{name}.jsonl") for name in ("train", "val", "test")}


def test_real_sample_splits_8_1_1_deterministically(tmp_path, sample_rows_path):
    run_script("data.py", f"--dataset={sample_rows_path}", f"--data_dir={tmp_path / 'a'}")
    run_script("data.py", f"--dataset={sample_rows_path}", f"--data_dir={tmp_path / 'b'}")
    s = splits(tmp_path / "a")
    assert [len(s[k]) for k in ("train", "val", "test")] == [160, 20, 20]
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    questions = [{r["question"] for r in rows} for rows in s.values()]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    rows = [r for rows in s.values() for r in rows]
    assert len({r["id"] for r in rows}) == 200
    assert not any("\\n" in r[k] for r in rows for k in ("question", "think", "answer"))
    assert set(rows[0]) >= {"id", "question", "think", "answer", "instruction", "metrics"}
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["cleaned"]["literal_newlines"] == 7 and stats["rows_kept"] == 200
    lengths = stats["token_lengths"]  # conftest points MEDSFT_TOKENIZER at the real tokenizer
    assert lengths["tokenizer"] and lengths["p50"] <= lengths["p95"] <= lengths["max"]


def test_other_seed_gives_other_split(tmp_path, sample_rows_path):
    run_script("data.py", f"--dataset={sample_rows_path}", f"--data_dir={tmp_path / 'a'}")
    run_script("data.py", f"--dataset={sample_rows_path}", f"--data_dir={tmp_path / 'b'}", "--seed=7")
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "b" / "test.jsonl").read_bytes()


def test_planted_bad_lines_are_named_counted_and_skipped(tmp_path, sample_rows_path):
    good = sample_rows_path.read_bytes().splitlines()[:30]
    first = json.loads(good[0])
    bad = [
        b"{not json",                                                      # line 3
        json.dumps({**first, "question": "另一个问题", "think": ""}).encode(),  # line 6: empty field
        json.dumps({"question": "q", "answer": "a"}).encode(),             # line 9: missing think
        "{\"question\": \"\xff\"}".encode("latin-1"),                      # line 12: not UTF-8
        b"[1, 2]",                                                         # line 15: not an object
        json.dumps({**first, "answer": 3}).encode(),                       # line 18: wrong type
    ]
    lines = list(good)
    for k, b in enumerate(bad):
        lines.insert(2 + 3 * k, b)
    lines.insert(20, good[5])  # exact duplicate question: line 21
    lines.insert(22, b"   ")   # blank lines are not rows
    src = tmp_path / "planted.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}")
    for lineno, reason in [(3, "invalid JSON"), (6, "field 'think' is empty"), (9, "missing field 'think'"),
                           (12, "UTF-8"), (15, "JSON object"), (18, "field 'answer' is int")]:
        assert f"{src}:{lineno}: " in p.stdout and reason in p.stdout.split(f"{src}:{lineno}: ")[1].splitlines()[0]
    s = splits(tmp_path / "out")
    assert sum(len(v) for v in s.values()) == 30  # every good row kept, the duplicate dropped
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rows_bad"] == 6 and stats["duplicates_dropped"] == 1
    assert stats["duplicates"][0]["where"] == f"{src}:21"
    assert [s["where"] for s in stats["skipped"]] == [f"{src}:{n}" for n in (3, 6, 9, 12, 15, 18)]


def test_cleaning_tags_and_literal_newlines(tmp_path):
    rows = [{"question": f"问题{i}", "think": "<think>想\\n法</think>", "answer": " 答\\n案 "} for i in range(10)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}")
    out = [r for v in splits(tmp_path / "out").values() for r in v]
    assert {(r["think"], r["answer"]) for r in out} == {("想\n法", "答\n案")}


def test_json_csv_parquet_and_directory(tmp_path):
    import datasets

    rows = [{"question": f"问题{i}", "think": f"思考{i}", "answer": f"回答{i}"} for i in range(12)]
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.json").write_text(json.dumps(rows[:4], ensure_ascii=False), encoding="utf-8")
    datasets.Dataset.from_list(rows[4:8]).to_csv(str(d / "b.csv"), index=False)
    datasets.Dataset.from_list(rows[8:]).to_parquet(str(d / "c.parquet"))
    run_script("data.py", f"--dataset={d}", f"--data_dir={tmp_path / 'out'}")
    out = [r for v in splits(tmp_path / "out").values() for r in v]
    assert sorted(r["question"] for r in out) == sorted(r["question"] for r in rows)


@pytest.mark.parametrize("content,needle", [(b"", "no usable rows"), (b"{bad\n", "no usable rows")])
def test_empty_or_all_bad_file_fails(tmp_path, content, needle):
    src = tmp_path / "x.jsonl"
    src.write_bytes(content)
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", check=False)
    assert p.returncode != 0 and needle in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_missing_file_fails_with_fix(tmp_path):
    p = run_script("data.py", f"--dataset={tmp_path / 'nope.jsonl'}", check=False)
    assert p.returncode != 0 and "file not found" in p.stderr and "--dataset=" in p.stderr


def test_modelscope_offline_fails_fast_naming_local_option(monkeypatch, tmp_path, root):
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    monkeypatch.setattr(sys, "argv", ["data.py", f"--data_dir={tmp_path}"])
    with pytest.raises(MedsftError, match="--dataset=demo/medical_demo.jsonl"):
        runpy.run_path(str(root / "data.py"), run_name="__main__")


def test_demo_data_is_usable(tmp_path, demo_data_path):
    run_script("data.py", f"--dataset={demo_data_path}", f"--data_dir={tmp_path}")
    s = splits(tmp_path)
    assert [len(s[k]) for k in ("train", "val", "test")] == [32, 4, 4]


@pytest.mark.parametrize("n,args", [(2, []), (3, ["--val_ratio=0.5", "--test_ratio=0.45"])])
def test_too_few_rows_for_three_splits_fails(tmp_path, n, args):
    src = tmp_path / "few.jsonl"
    src.write_text("".join(json.dumps({"question": f"问{i}", "think": "想", "answer": "答"}, ensure_ascii=False) + "\n"
                           for i in range(n)), encoding="utf-8")
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", *args, check=False)
    assert p.returncode != 0 and "cannot fill train, val and test" in p.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_rows_asking_a_benchmark_item_are_counted_across_spellings(tmp_path, root):
    """stats.json counts the rows that ask an item of the benchmarks benchmark.py scores, whatever their width,
    spacing, punctuation, item number or appended options; a benchmark it cannot read is named, never fatal."""
    rows = [{"question": "3. 成人正常静息心率的范围是（ ）A.40～60次/分 B.60～100次/分", "think": "t", "answer": "a"},
            {"question": "\u3000阿司匹林的主要不良反应是\u200b？", "think": "t", "answer": "a"},  # full-width, zero-width
            {"question": "缺乏维生素Ｄ可导致", "think": "t", "answer": "a"},  # a stem too short to name an item alone
            {"question": "高血压患者的饮食应注意什么", "think": "t", "answer": "a"}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    suite = f"cmb={root / 'demo/benchmarks/cmb'},cmexam={tmp_path / 'absent'}"
    proc = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'd'}", f"--benchmarks={suite}")
    overlap = json.loads((tmp_path / "d" / "stats.json").read_text(encoding="utf-8"))["benchmark_overlap"]
    assert (overlap["rows"], overlap["checked"], list(overlap["not_checked"])) == (2, {"cmb": 6}, ["cmexam"])
    assert {e["benchmark"] for e in overlap["examples"]} == {"cmb"} and "benchmark items among the rows: 2" in proc.stdout


def test_cleaning_never_forms_a_control_token_or_a_think_tag(tmp_path):
    """Removing stray think tags could join the rest into a token: `<|im_<think>end|>` -> `<|im_end|>`,
    `<thi</think>nk>` -> `<think>`. The cleaned text is what gets checked: both rows are one named, counted rejection."""
    rows = [{"question": f"问题{i}", "think": "想法", "answer": "答案"} for i in range(8)]
    rows += [{"question": "问<|im_<think>end|>题", "think": "想法", "answer": "答案"},
             {"question": "问题X", "think": "想法", "answer": "答<thi</think>nk>案"}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    proc = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    written = "".join((tmp_path / "out" / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "val", "test"))
    assert "<|im_end|>" not in written and "<think>" not in written and "</think>" not in written
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 8 and stats["rows_control_tokens"] == 2
    assert [s["where"] for s in stats["skipped"]] == [f"{src}:9", f"{src}:10"]
    assert f"{src}:9" in proc.stdout and f"{src}:10" in proc.stdout


# --- one reader: file:line of every format, CSV cells as text ------------------------------------------------------
def _csv(path, header, records):
    """Write ``records`` (fields may hold line breaks) as CSV; the line each record starts on."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    starts = []
    for rec in records:
        starts.append(buf.getvalue().count("\n") + 1)
        writer.writerow(rec)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return starts


def test_csv_bad_rows_are_named_by_the_line_their_record_starts_on(tmp_path):
    """A think spans lines in a CSV cell: a bad row's file:line is where its record starts, not header + row."""
    records = [[f"问题{i}", f"思考{i}\n第二步\n第三步", f"回答{i}"] for i in range(10)]
    records[4][1] = ""  # empty think
    records[7] = records[7][:2]  # no answer cell
    src = tmp_path / "rows.csv"
    starts = _csv(src, ["question", "think", "answer"], records)
    proc = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_read"] == 10 and stats["rows_kept"] == 8 and stats["rows_bad"] == 2
    assert [s["where"] for s in stats["skipped"]] == [f"{src}:{starts[4]}", f"{src}:{starts[7]}"]
    assert f"{src}:{starts[4]}:" in proc.stdout and f"{src}:{starts[7]}:" in proc.stdout


def test_csv_cells_stay_text(tmp_path):
    """No type guessing: an all-digit answer column stays strings (a guessing reader made them ints and rejected
    every row), and 'NA' in a cell is the text NA, not a missing value."""
    records = [[f"成人正常静息心率的下限{i}", "想", str(60 + i), "NA"] for i in range(10)]
    records[3][0] = "NA"
    src = tmp_path / "digits.csv"
    _csv(src, ["question", "think", "answer", "note"], records)
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 10 and stats["rows_bad"] == 0
    out = sorted((r for v in splits(tmp_path / "out").values() for r in v), key=lambda r: r["answer"])
    assert [(r["answer"], r["note"]) for r in out] == [(str(60 + i), "NA") for i in range(10)]
    assert "NA" in {r["question"] for r in out}


def test_json_list_bad_items_are_named_by_file_line(tmp_path):
    """A JSON list's bad element is named by the line it starts on, like a JSONL line."""
    items = [{"question": f"问题{i}", "think": "想", "answer": "答"} for i in range(10)]
    items[3], items[6] = 3, {"question": "问"}
    src = tmp_path / "rows.json"
    text = json.dumps(items, ensure_ascii=False, indent=2)
    src.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    bad_lines = [lines.index("  3,") + 1, lines.index('    "question": "问"')]  # 1-based: the int, the dict's {
    proc = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 8 and stats["rows_bad"] == 2
    assert [s["where"] for s in stats["skipped"]] == [f"{src}:{n}" for n in bad_lines]
    assert all(f"{src}:{n}:" in proc.stdout for n in bad_lines)


# --- the hub probe of the benchmark-overlap check ------------------------------------------------------------------
def test_the_hub_probe_runs_while_the_rows_are_read(monkeypatch, tmp_path, root, demo_data_path):
    """CMMLU's default source is on ModelScope: the probe of the hub (seconds when offline) is under way while the
    rows are read and checked, and its answer is used for the overlap check."""
    import threading

    from medsft import rows

    probing = threading.Event()

    def hub_problem(spec, repo_type="model"):
        probing.set()
        return "offline"

    reader, overlapped = rows.read_records, []

    def read_records(path):
        overlapped.append(probing.wait(timeout=10))
        yield from reader(path)

    monkeypatch.setattr(models, "hub_problem", hub_problem)
    monkeypatch.setattr(rows, "read_records", read_records)
    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)
    monkeypatch.setattr(sys, "argv", ["data.py", f"--dataset={demo_data_path}", f"--data_dir={tmp_path}"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    runpy.run_path(str(root / "data.py"), run_name="__main__")
    assert overlapped == [True]
    overlap = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))["benchmark_overlap"]
    assert "offline" in overlap["not_checked"]["cmmlu"]


def test_a_failing_stage_does_not_wait_for_the_hub_probe(tmp_path):
    """No usable row: the stage fails at once, without waiting for the hub's answer (its timeout, offline)."""
    import time

    src = tmp_path / "bad.jsonl"
    src.write_text("{bad\n", encoding="utf-8")
    start = time.monotonic()
    proc = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", check=False,
                      env={"MEDSFT_TOKENIZER": "", "MEDSFT_HUB_TIMEOUT_S": "60"})  # no tokenizer: seconds of its own
    assert proc.returncode != 0 and "no usable rows" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60


# --- inputs the reader must survive: one bad row, or one message naming the file -----------------------------------
def _rows(n, prefix="问题"):
    return [{"question": f"{prefix}{i}", "think": f"思考{i}", "answer": f"回答{i}"} for i in range(n)]


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("where", ["same", "inside", "output file"])
def test_a_dataset_that_holds_the_data_dir_is_refused(tmp_path, where):
    """--dataset=D --data_dir=D would read its own train/val/test.jsonl on a re-run (test rows leaking into train)."""
    d = tmp_path / "d"
    run_script("data.py", f"--dataset={_jsonl(tmp_path / 'rows.jsonl', map(json.dumps, _rows(10)))}",
               f"--data_dir={d}", "--benchmarks=")
    (d / "mine.jsonl").write_bytes((tmp_path / "rows.jsonl").read_bytes())
    dataset, data_dir = {"same": (d, d), "inside": (d, d / "out"), "output file": (d / "train.jsonl", d)}[where]
    before = _snapshot(tmp_path)
    p = run_script("data.py", f"--dataset={dataset}", f"--data_dir={data_dir}", "--benchmarks=", check=False)
    assert_exit(p, 1, f"--dataset={dataset}", f"--data_dir={data_dir}")
    assert _snapshot(tmp_path) == before


def test_a_dataset_apart_from_the_data_dir_still_runs(tmp_path, demo_data_path):
    """The data_dir may hold the rows' folder (data/raw in data/), and the defaults stay usable."""
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "rows.jsonl").write_bytes(demo_data_path.read_bytes())
    run_script("data.py", f"--dataset={raw}", f"--data_dir={tmp_path / 'data'}", "--benchmarks=")
    run_script("data.py", f"--dataset={raw}", f"--data_dir={tmp_path / 'data'}", "--benchmarks=")
    assert sum(map(len, splits(tmp_path / "data").values())) == 40


@pytest.mark.parametrize("field", ["question", "think", "note", "key"])
def test_a_lone_surrogate_makes_its_row_bad(tmp_path, field):
    """A JSON "\\ud800" escape decodes to a lone surrogate, which no UTF-8 file can hold: that row is bad."""
    bad = {**_rows(1, "坏")[0], "note": "ok"}
    line = json.dumps(bad, ensure_ascii=False)
    line = line.replace('"ok"', '"\\udc80"') if field == "note" else line.replace('"note"', '"n\\ud800"') \
        if field == "key" else line.replace(f'"{bad[field]}"', f'"{bad[field]}\\ud800"')
    src = _jsonl(tmp_path / "s.jsonl", [*map(json.dumps, _rows(10)), line])
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=", check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert [line for line in p.stdout.splitlines() if f"{src}:11:" in line and ("n\\ud800" if field == "key"
                                                                                else field) in line], p.stdout
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 10 and [s["where"] for s in stats["skipped"]] == [f"{src}:11"]


def test_parquet_extra_columns_of_any_type_are_kept_as_text(tmp_path):
    """Extra fields are kept (as for JSONL); a value JSON cannot hold (a timestamp, bytes, a decimal) as its text."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(10)
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({**{k: [r[k] for r in rows] for k in ("question", "think", "answer")},
                             "at": [datetime.datetime(2024, 1, 2)] * 10, "blob": [b"\x00\x01"] * 10,
                             "price": pa.array([decimal.Decimal("1.50")] * 10, pa.decimal128(5, 2))}), src)
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    out = [r for v in splits(tmp_path / "out").values() for r in v]
    assert len(out) == 10 and all(r["at"].startswith("2024-01-02") and r["price"] == "1.50" and r["blob"]
                                  for r in out)


@pytest.mark.parametrize("content", [b"", b"not a parquet file\n"], ids=["empty", "garbage"])
def test_an_unreadable_parquet_is_one_error_naming_it(tmp_path, content):
    src = tmp_path / "x.parquet"
    src.write_bytes(content)
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=", check=False)
    assert_exit(p, 1, src)


def test_a_csv_cell_over_the_default_field_limit_is_read(tmp_path):
    """Python's csv refuses cells over 131,072 characters unless told; a long think is a row like any other."""
    records = [[r["question"], r["think"], r["answer"]] for r in _rows(10)]
    records[5][1] = "想" * 200_000
    src = tmp_path / "big.csv"
    _csv(src, ["question", "think", "answer"], records)
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    assert max(len(r["think"]) for v in splits(tmp_path / "out").values() for r in v) == 200_000


def test_a_csv_cell_over_the_row_limit_is_one_error_naming_its_line(tmp_path):
    """A cell over what a row may hold (an unclosed quote runs to the end of the file) is named by its record."""
    from medsft import rows
    from medsft.files import MAX_LINE_BYTES

    records = [[r["question"], r["think"], r["answer"]] for r in _rows(10)]
    records[5][1] = "x\n" * (MAX_LINE_BYTES // 2 + 1)  # no line over the limit, one cell over it
    src = tmp_path / "big.csv"
    starts = _csv(src, ["question", "think", "answer"], records)
    with raises_naming(MedsftError, src) as e:
        list(rows.read_records(src))
    assert f"{src}:{starts[5]}:" in str(e.value), str(e.value)  # where the record starts


def test_json_beyond_the_parsers_limits_is_a_bad_row_or_one_error(tmp_path):
    """An integer over Python's 4,300 digits, or nesting deeper than its recursion limit: in JSONL that row is bad
    (file:line), in a .json list one message naming the file."""
    good = list(map(json.dumps, _rows(10)))
    big = json.dumps({**_rows(1, "大")[0], "n": 1})[:-1].replace('"n": 1', '"n": ' + "9" * 5000) + "}"
    deep = json.dumps({**_rows(1, "深")[0]})[:-1] + ', "n": ' + "[" * 100_000 + "]" * 100_000 + "}"
    readable = json.dumps({**_rows(1, "中")[0]})[:-1] + ', "n": ' + "[" * 985 + "]" * 985 + "}"  # read, not written
    src = _jsonl(tmp_path / "lim.jsonl", good[:3] + [big] + good[3:6] + [deep] + good[6:] + [readable])
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 10 and [s["where"] for s in stats["skipped"]] == [f"{src}:{n}" for n in (4, 8, 13)]
    assert all(f"{src}:{n}:" in p.stdout for n in (4, 8, 13))
    for bad in (big, deep):
        listed = tmp_path / "lim.json"
        listed.write_text("[\n" + ",\n".join(good + [bad]) + "\n]\n", encoding="utf-8")
        p = run_script("data.py", f"--dataset={listed}", f"--data_dir={tmp_path / 'out2'}", "--benchmarks=",
                       check=False)
        assert_exit(p, 1, f"{listed}:12")


def test_an_unreadable_file_is_one_error_naming_it(monkeypatch, tmp_path):
    import builtins

    from medsft import rows

    src = _jsonl(tmp_path / "locked.jsonl", map(json.dumps, _rows(3)))
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):  # chmod 000 does not stop root
        if str(file) == str(src):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with raises_naming(MedsftError, src, "Permission denied"):
        list(rows.read_records(src))


def test_a_home_of_no_such_user_is_one_error(tmp_path):
    p = run_script("data.py", "--dataset=~medsft_no_such_user/x.jsonl", f"--data_dir={tmp_path / 'out'}", check=False)
    assert_exit(p, 1, "~medsft_no_such_user/x.jsonl")


def test_file_names_are_shown_without_their_terminal_escapes(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    _jsonl(d / "a.jsonl", map(json.dumps, _rows(10)))
    _jsonl(d / "b\x1b[2J\x1b]0;pwned\x07.jsonl", ["{bad"])
    p = run_script("data.py", f"--dataset={d}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    assert "\x1b" not in p.stdout + p.stderr and "\x07" not in p.stdout + p.stderr
    assert lines_naming(p.stdout, "b\\x1b[2J\\x1b]0;pwned\\x07.jsonl:1:"), p.stdout


@pytest.mark.parametrize("spec", ["./no-such-tokenizer", "../no-such-tokenizer", "/no/such/tokenizer",
                                  "~/no-such-tokenizer", "no-such-tokenizer/"])
def test_a_missing_local_tokenizer_is_one_error_naming_the_option(monkeypatch, tmp_path, demo_data_path, root, spec):
    monkeypatch.setattr(models, "download", lambda *a, **k: pytest.fail(f"{spec} taken for a ModelScope id"))
    monkeypatch.setattr(sys, "argv", ["data.py", f"--dataset={demo_data_path}", f"--data_dir={tmp_path / 'out'}",
                                      "--benchmarks=", f"--tokenizer={spec}"])
    with raises_naming(MedsftError, "--tokenizer", spec) as info:
        runpy.run_path(str(root / "data.py"), run_name="__main__")
    assert "--model" not in str(info.value) and not (tmp_path / "out").exists()


def test_a_tokenizer_that_cannot_be_downloaded_names_the_tokenizer_option(monkeypatch, tmp_path, demo_data_path, root):
    monkeypatch.setattr(models, "hub_problem", lambda *a, **k: "offline")
    monkeypatch.setattr(sys, "argv", ["data.py", f"--dataset={demo_data_path}", f"--data_dir={tmp_path / 'out'}",
                                      "--benchmarks=", "--tokenizer=NoSuchOrg/no-such-model"])
    with raises_naming(MedsftError, "--tokenizer=", "NoSuchOrg/no-such-model") as info:
        runpy.run_path(str(root / "data.py"), run_name="__main__")
    assert "--model" not in str(info.value)


@pytest.mark.parametrize("key", ["data", None])
def test_a_json_file_holding_one_object_is_one_error(tmp_path, key):
    """A pretty-printed export ({"data": [...]}) read line by line would be one bad row per line."""
    src = tmp_path / "export.json"
    doc = {key: _rows(20)} if key else {"rows": _rows(10), "count": 10}
    src.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=", check=False)
    assert_exit(p, 1, src, *([f"'{key}'"] if key else []))
    assert "skip" not in p.stdout and not (tmp_path / "out").exists()


def test_a_json_file_of_json_lines_is_still_read_row_by_row(tmp_path):
    src = _jsonl(tmp_path / "rows.json", ["{bad", *map(json.dumps, _rows(10))])
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 10 and [s["where"] for s in stats["skipped"]] == [f"{src}:1"]


def test_a_file_name_that_is_not_utf8_keeps_the_good_rows(tmp_path):
    import os

    d = tmp_path / "src"
    d.mkdir()
    _jsonl(d / "a.jsonl", map(json.dumps, _rows(10)))
    fd = os.open(os.fsencode(d) + b"/bad\xff.jsonl", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"{bad\n")
    os.close(fd)
    p = run_script("data.py", f"--dataset={d}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_kept"] == 10 and [s["where"] for s in stats["skipped"]] == [f"{d}/bad\\xff.jsonl:1"]
    assert lines_naming(p.stdout, "bad\\xff.jsonl:1:"), p.stdout
