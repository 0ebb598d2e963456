"""Issue 11 (data side): BOMs, wrong encodings, near-duplicate questions, all-or-nothing publishing of the split,
file modes, the ModelScope reachability check behind proxies/mirrors, and the test-suite's own hygiene."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_script
from oracles import assert_exit, numbers_in, raises_naming

from medsft import files as io, models
from medsft.files import MedsftError

PUBLISHED = ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json", "data_config.json")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
              "no_proxy", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "MODELSCOPE_PREFER_AI_SITE")


def rows(n: int, prefix: str = "问题") -> list[dict]:
    return [{"question": f"{prefix}{i}：头痛怎么办？", "think": f"思考{i}", "answer": f"回答{i}"} for i in range(n)]


def jsonl_text(items: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)


def out_rows(d: Path) -> list[dict]:
    return [json.loads(line) for name in ("train", "val", "test")
            for line in (d / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def run_data(monkeypatch, *args: str) -> None:
    """data.py in this process (so a test can make one of its writes fail), without token-length stats."""
    monkeypatch.delenv("MEDSFT_TOKENIZER", raising=False)
    monkeypatch.setattr(sys, "argv", ["data.py", *args])
    runpy.run_path(str(ROOT / "data.py"), run_name="__main__")


def snapshot(d: Path) -> dict[str, bytes]:
    """Every entry of ``d``, hidden temp/backup files included, so leftovers count as a difference."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


# --- 1. byte-order marks --------------------------------------------------------------------------------------------


def test_bom_jsonl_keeps_its_first_row(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + jsonl_text(rows(10)).encode("utf-8"))
    run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["rows_bad"] == 0 and stats["rows_kept"] == 10
    assert sorted(r["question"] for r in out_rows(tmp_path / "out")) == sorted(r["question"] for r in rows(10))


def test_bom_json_and_csv_are_read_transparently(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    items = rows(12)
    (d / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(items[:6], ensure_ascii=False).encode("utf-8"))
    csv = "question,think,answer\n" + "".join(f"{r['question']},{r['think']},{r['answer']}\n" for r in items[6:])
    (d / "b.csv").write_bytes(b"\xef\xbb\xbf" + csv.encode("utf-8"))
    run_script("data.py", f"--dataset={d}", f"--data_dir={tmp_path / 'out'}")
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["rows_bad"] == 0
    assert sorted(r["question"] for r in out_rows(tmp_path / "out")) == sorted(r["question"] for r in items)


def test_bom_at_the_start_of_a_concatenated_part_is_ignored(tmp_path):
    part = b"\xef\xbb\xbf" + jsonl_text(rows(3)).encode("utf-8")
    src = tmp_path / "cat.jsonl"
    src.write_bytes(part + b"\xef\xbb\xbf" + jsonl_text(rows(3, prefix="另一个")).encode("utf-8"))
    assert [err for _, _, err in io.iter_jsonl(src)] == [None] * 6


# --- 2. files in another encoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_gbk_file_is_one_clear_error(tmp_path, suffix):
    items = rows(10)
    if suffix == ".jsonl":
        text = jsonl_text(items)
    elif suffix == ".json":
        text = json.dumps(items, ensure_ascii=False, indent=1)
    else:
        text = "question,think,answer\n" + "".join(f"{r['question']},{r['think']},{r['answer']}\n" for r in items)
    src = tmp_path / f"gbk{suffix}"
    src.write_bytes(text.encode("gbk"))
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", check=False)
    first_bad = next(i for i, line in enumerate(text.encode("gbk").split(b"\n"), 1) if not line.isascii())
    offset = next(i for i, b in enumerate(text.encode("gbk")) if b >= 0x80)
    # the file and its first bad line and byte, the encoding it needs, and the command that converts it
    assert_exit(p, 1, f"{src}:{first_bad}:", f"byte {offset}", "UTF-8", f"iconv -f GBK -t UTF-8 {src}")
    assert not (tmp_path / "out").exists()


def test_gbk_error_names_the_byte_offset(tmp_path):
    src = tmp_path / "gbk.jsonl"
    data = jsonl_text(rows(4)).encode("gbk")
    src.write_bytes(data)
    offset = next(i for i, b in enumerate(data) if b >= 0x80)
    with raises_naming(MedsftError, f"{src}:1:", "UTF-8") as e:
        list(io.iter_jsonl(src))
    assert f"byte {offset} " in str(e.value), str(e.value)


def test_a_single_bad_byte_stays_a_per_row_error(tmp_path):
    good = jsonl_text(rows(9)).encode("utf-8").splitlines()
    src = tmp_path / "one-bad.jsonl"
    src.write_bytes(b"\n".join(good[:4] + ['{"question": "\xff"}'.encode("latin-1")] + good[4:]) + b"\n")
    found = list(io.iter_jsonl(src))
    assert [lineno for lineno, _, err in found if err] == [5] and "UTF-8" in found[4][2]
    assert sum(row is not None for _, row, _ in found) == 9


def test_a_torn_last_line_stays_a_per_row_error(tmp_path):
    src = tmp_path / "appended.jsonl"  # a writer killed mid-append cut the only row inside a character
    src.write_bytes(jsonl_text(rows(1)).encode("utf-8")[:-5])
    [(lineno, row, err)] = list(io.iter_jsonl(src))
    assert lineno == 1 and row is None and "UTF-8" in err


def test_utf16_file_is_named_as_such(tmp_path):
    src = tmp_path / "u16.jsonl"
    src.write_bytes(jsonl_text(rows(3)).encode("utf-16"))
    with raises_naming(MedsftError, src, "UTF-16", f"iconv -f UTF-16 -t UTF-8 {src}"):
        list(io.iter_jsonl(src))


@pytest.mark.parametrize("codec", ["utf-32", "utf-32-be"])
def test_utf32_file_is_named_as_such(tmp_path, codec):
    src = tmp_path / "u32.jsonl"  # its BOM starts like UTF-16's: iconv -f UTF-16 would give text full of NULs
    src.write_bytes(("\ufeff" + jsonl_text(rows(3))).encode(codec))
    with raises_naming(MedsftError, src, "UTF-32", f"iconv -f UTF-32 -t UTF-8 {src}"):
        list(io.iter_jsonl(src))


# --- 3. near-duplicate questions ---------------------------------------------------------------------------------


def test_questions_differing_only_in_whitespace_or_width_are_merged(tmp_path):
    base = rows(10)
    variants = [
        {**base[0], "question": base[0]["question"].replace("头痛", "头 痛")},        # inner space
        {**base[1], "question": base[1]["question"].replace("头痛", "头\u3000痛")},   # ideographic space
        {**base[2], "question": base[2]["question"].replace("怎么办", "怎么\n办")},    # a line break
        {**base[3], "question": base[3]["question"] + "\t", "answer": "另一个回答"},   # trailing tab: stripped
        {**base[4], "question": base[4]["question"].replace("？", "?")},             # full-width vs ASCII
        {**base[5], "question": base[5]["question"].replace("头痛", "头\u200b痛")},   # zero-width space
    ]
    src = tmp_path / "near.jsonl"
    src.write_text(jsonl_text(base + variants + [base[6]]), encoding="utf-8")
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}")
    out = out_rows(tmp_path / "out")
    assert sorted(r["question"] for r in out) == sorted(r["question"] for r in base)  # the first one wins
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["duplicates_dropped"] == 7 and stats["near_duplicates_merged"] == 5
    assert [d["where"] for d in stats["duplicates"]] == [f"{src}:{n}" for n in range(11, 18)]
    assert [d["exact"] for d in stats["duplicates"]] == [False, False, False, True, False, False, True]
    said = [n for n in map(numbers_in, p.stdout.splitlines()) if any(n[i:i + 2] == [7, 5] for i in range(len(n)))]
    assert said, p.stdout  # said: 7 duplicates dropped, 5 of them differing only in whitespace or width
    # ids of rows that are not duplicates keep their old derivation: sha1 of the cleaned question text
    assert all(r["id"] == "med-" + hashlib.sha1(r["question"].encode()).hexdigest()[:12] for r in out)



def test_the_duplicate_count_says_what_the_question_key_ignores(tmp_path):
    """mcq.question_key also ignores punctuation, case, a leading item number and options written after the question:
    rows differing so are merged, and the summary line says so (it said: only whitespace or character width)."""
    base = rows(10)
    variants = [{**base[0], "question": base[0]["question"].replace("：", "")},         # punctuation
                {**base[1], "question": "12. " + base[1]["question"]},                  # a leading item number
                {**base[2], "question": base[2]["question"] + " A.休息 B.吃药"}]         # options appended
    src = tmp_path / "near.jsonl"
    src.write_text(jsonl_text(base + variants), encoding="utf-8")
    p = run_script("data.py", f"--dataset={src}", f"--data_dir={tmp_path / 'out'}", "--benchmarks=")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["near_duplicates_merged"] == 3
    said = [line for line in p.stdout.splitlines() if 3 in numbers_in(line) and "duplicate" in line]
    assert said and all(w in said[0] for w in ("punctuation", "item number", "options")), p.stdout


# --- 4. all-or-nothing publishing ----------------------------------------------------------------------------------


def fail_nth(monkeypatch, target, name: str, n: int, exc: BaseException, persistent: bool = False) -> list:
    """Make the n-th call of ``target.name`` (and, if persistent, every later one) raise ``exc``."""
    real, calls = getattr(target, name), []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == n or (persistent and len(calls) > n):
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.mark.parametrize("target,name,exc", [(os, "replace", OSError(28, "No space left on device")),
                                             (os, "fsync", KeyboardInterrupt()),
                                             (io, "dumps_jsonl", ValueError("serialisation failed"))])
def test_a_failure_at_any_point_leaves_every_old_file(monkeypatch, tmp_path, demo_data_path, target, name, exc):
    out = tmp_path / "out"
    run_data(monkeypatch, f"--dataset={demo_data_path}", f"--data_dir={out}")
    old = snapshot(out)
    assert set(old) == set(PUBLISHED)
    for n in range(1, 100):  # fail the 1st call, then the 2nd, ... until a run makes fewer calls than that
        with monkeypatch.context() as m:
            calls = fail_nth(m, target, name, n, exc)
            try:
                run_data(m, f"--dataset={demo_data_path}", f"--data_dir={out}", "--seed=7")
            except type(exc):
                assert snapshot(out) == old, f"{name} call {n} failed: the folder mixes old and new files"
                continue
        assert len(calls) < n
        break
    assert n > 1, f"data.py never called os.{name} while publishing"
    new = snapshot(out)
    assert set(new) == set(PUBLISHED) and all(new[k] != old[k] for k in ("train.jsonl", "stats.json"))


def test_a_failure_on_a_fresh_folder_leaves_nothing(monkeypatch, tmp_path, demo_data_path):
    out = tmp_path / "out"
    for n in (1, 3):
        with monkeypatch.context() as m:
            fail_nth(m, os, "replace", n, OSError(28, "No space left on device"))
            with pytest.raises(OSError):
                run_data(m, f"--dataset={demo_data_path}", f"--data_dir={out}")
        assert snapshot(out) == {}


def test_an_interrupted_publish_is_refused_on_read_and_rolled_back_next_run(monkeypatch, tmp_path, demo_data_path):
    out = tmp_path / "out"
    run_data(monkeypatch, f"--dataset={demo_data_path}", f"--data_dir={out}")
    old = snapshot(out)
    with monkeypatch.context() as m:  # the disk stays broken during the rollback too, as in a crash
        fail_nth(m, os, "replace", 3, OSError(5, "Input/output error"), persistent=True)
        with pytest.raises(OSError) as e:
            run_data(m, f"--dataset={demo_data_path}", f"--data_dir={out}", "--seed=7")
    assert "data.py again" in "".join(getattr(e.value, "__notes__", []))
    assert (out / "train.jsonl").read_bytes() != old["train.jsonl"]  # half published: some new, some old
    with raises_naming(MedsftError, out / "val.jsonl", "data.py"):  # the file, and what to run to restore it
        io.read_jsonl(out / "val.jsonl")
    assert io.recover_publish(out) is True
    assert snapshot(out) == old and io.recover_publish(out) is False
    run_data(monkeypatch, f"--dataset={demo_data_path}", f"--data_dir={out}", "--seed=7")
    assert set(snapshot(out)) == set(PUBLISHED) and snapshot(out)["train.jsonl"] != old["train.jsonl"]


def test_publish_keeps_other_files_in_the_folder(tmp_path):
    (tmp_path / "raw.jsonl").write_text("mine\n")
    io.publish_files(tmp_path, {"a.json": b"1", "b.json": b"2"}, writer="test")
    io.publish_files(tmp_path, {"a.json": b"3", "b.json": b"4"}, writer="test")
    assert snapshot(tmp_path) == {"a.json": b"3", "b.json": b"4", "raw.jsonl": b"mine\n"}



def test_a_folder_named_like_an_output_file_is_refused_and_kept(tmp_path, demo_data_path):
    """A user's folder called train.jsonl would be moved aside into the publish's old/ and deleted with it."""
    out = tmp_path / "out"
    (out / "train.jsonl").mkdir(parents=True)
    (out / "train.jsonl" / "notes.txt").write_text("mine\n")
    before = {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    p = run_script("data.py", f"--dataset={demo_data_path}", f"--data_dir={out}", "--benchmarks=", check=False)
    assert_exit(p, 1, out / "train.jsonl")
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before


def test_publish_files_refuses_a_folder_in_place_of_a_file_for_every_writer(tmp_path):
    (tmp_path / "b.json").mkdir()
    (tmp_path / "b.json" / "x").write_text("mine\n")
    with raises_naming(MedsftError, tmp_path / "b.json"):
        io.publish_files(tmp_path, {"a.json": b"1", "b.json": b"2"}, writer="test")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["b.json", "b.json/x"]
    assert (tmp_path / "b.json" / "x").read_text() == "mine\n"


# --- 11. file modes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_get_the_mode_the_umask_allows(monkeypatch, tmp_path, demo_data_path, umask):
    old = os.umask(umask)
    try:
        single = io.write_json(tmp_path / "one.json", {"a": 1})
        run_data(monkeypatch, f"--dataset={demo_data_path}", f"--data_dir={tmp_path / 'out'}")
    finally:
        os.umask(old)
    for p in [single, *(tmp_path / "out" / name for name in PUBLISHED)]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


# --- 13. ModelScope reachability behind a proxy or a mirror ---------------------------------------------------------


class FakeServer:
    """A local TCP server that records each request line and answers every connection with ``reply``."""

    def __init__(self, reply: bytes):
        self.reply, self.requests = reply, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by the test
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                conn.sendall(self.reply)

    def close(self):
        self.sock.close()


@pytest.fixture
def no_hub_env(monkeypatch, tmp_path):
    # its own download lock: a test on the other xdist worker fetching the same id must not make this one wait
    monkeypatch.setenv("MEDSFT_CACHE", str(tmp_path / "medsft-cache"))
    monkeypatch.delenv("MEDSFT_HUB_TIMEOUT_S")  # the product's own wait (conftest shortens it for the other tests)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    try:  # modelscope >= 1.38 reads its endpoint settings once per process
        monkeypatch.setattr("modelscope_hub.config._default_config", None)
    except ImportError:
        pass


@pytest.fixture
def refusing_proxy():
    server = FakeServer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    yield server
    server.close()


def _one_download_error(spec="FakeOrg/Fake-Model", *fragments):
    """The one MedsftError a hub id gives when the hub cannot be used, within the hub timeout."""
    start = time.monotonic()
    with raises_naming(MedsftError, f"'{spec}'", "--model=/path/to", *fragments):
        models.resolve_model(spec)
    assert time.monotonic() - start < models.hub_timeout_s() + 3


def test_hub_id_offline_is_one_error_within_the_timeout(no_hub_env, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    _one_download_error("FakeOrg/Fake-Model", "http://127.0.0.1:9")


def test_a_silent_hub_is_one_error_within_the_timeout(no_hub_env, monkeypatch):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts the connection, never answers
    try:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        _one_download_error("FakeOrg/Fake-Model", os.environ["MODELSCOPE_ENDPOINT"], "MODELSCOPE_ENDPOINT",
                            "HTTPS_PROXY")  # the silent endpoint, and the two settings that pick another
    finally:
        silent.close()


@pytest.mark.parametrize("seconds", ["0.2", "60"])
def test_the_hub_timeout_is_a_setting(no_hub_env, monkeypatch, seconds):
    silent = socket.create_server(("127.0.0.1", 0))  # the client waits on it until our timeout gives up
    monkeypatch.setenv("MEDSFT_HUB_TIMEOUT_S", seconds)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    try:
        if seconds == "60":  # a longer wait than the default is kept: the probe still waits after it
            monkeypatch.setattr(models, "HUB_TIMEOUT_S", 0.2)
            probe = models.hub_probe("FakeOrg/Fake-Model")
            time.sleep(1.2)
            assert not probe.done()
        else:
            start = time.monotonic()
            assert "0.2 s" in models.hub_problem("FakeOrg/Fake-Model")
            assert time.monotonic() - start < models.HUB_TIMEOUT_S
    finally:
        silent.close()


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "inf", "nan"])
def test_a_bad_hub_timeout_is_one_error_naming_it(no_hub_env, monkeypatch, bad):
    monkeypatch.setenv("MEDSFT_HUB_TIMEOUT_S", bad)
    with raises_naming(MedsftError, "MEDSFT_HUB_TIMEOUT_S", bad):
        models.hub_problem("FakeOrg/Fake-Model")


def test_a_bad_hub_timeout_stops_data_py_before_any_row_is_read(tmp_path, demo_data_path):
    # data.py asks the hub about CMMLU in the background: a bad setting must not pass as "CMMLU not checked"
    proc = run_script("data.py", f"--dataset={demo_data_path}", f"--data_dir={tmp_path / 'out'}", check=False,
                      env={"MEDSFT_HUB_TIMEOUT_S": "soon", "MEDSFT_TOKENIZER": ""})
    assert_exit(proc, 1, "MEDSFT_HUB_TIMEOUT_S", "soon")
    assert not (tmp_path / "out").exists()


def test_a_refusing_proxy_is_one_error_within_the_timeout(no_hub_env, monkeypatch, refusing_proxy):
    monkeypatch.setenv("HTTPS_PROXY", refusing_proxy.url)
    _one_download_error("FakeOrg/Fake-Model")
    assert any(r.startswith("CONNECT ") for r in refusing_proxy.requests)


# --- 14/15. the test suite: MEDSFT_NO_SHARED and cleaning up its cache --------------------------------------------

INNER_TESTS = '''
import os
from pathlib import Path

def test_cache_is_written():
    d = Path(os.environ["MEDSFT_CACHE"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiny-model").write_bytes(b"x" * 1000)
    print("TOKENIZER=" + os.environ.get("MEDSFT_TOKENIZER", ""))

def test_shared_is_hidden(shared_dir):
    pass
'''


def run_inner_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A pytest session that loads the project's conftest (as a plugin) on a throwaway test file."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    full_env = {k: v for k, v in os.environ.items() if k not in ("MEDSFT_CACHE", "MEDSFT_TOKENIZER", "MEDSFT_NO_SHARED")}
    full_env.update(PYTHONPATH=str(ROOT / "tests"), PYTEST_TMPDIR=str(tmp_path), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "conftest", "-p", "no:cacheprovider",
                           "test_inner.py"], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)


def test_session_removes_the_cache_it_created(tmp_path):
    p = run_inner_pytest(tmp_path)
    assert p.returncode == 0 and "TOKENIZER=" in p.stdout, p.stdout + p.stderr
    assert not list(tmp_path.glob("medsft-test-*"))


def test_session_keeps_a_cache_the_caller_chose(tmp_path):
    mine = tmp_path / "my-cache"
    p = run_inner_pytest(tmp_path, MEDSFT_CACHE=str(mine))
    assert p.returncode == 0 and "TOKENIZER=" in p.stdout, p.stdout + p.stderr
    assert (mine / "tiny-model").is_file()


def test_medsft_no_shared_hides_shared(tmp_path):
    # a MEDSFT_TOKENIZER inherited from a CI script that points into ../shared is dropped too
    p = run_inner_pytest(tmp_path, MEDSFT_NO_SHARED="1", MEDSFT_TOKENIZER=str(ROOT.parent / "shared" / "qwen3-1.7b"))
    assert "1 passed, 1 skipped" in p.stdout and "TOKENIZER=\n" in p.stdout, p.stdout + p.stderr
