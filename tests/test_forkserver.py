"""tests/forkserver.py ends a forked script as a fresh interpreter ends it: exit code, output, atexit, threads."""

import os
import subprocess
import sys

import pytest

import forkserver

ENDINGS = {
    "exit_message": "import sys\nprint('out')\nsys.exit('bad input: line 3')\n",
    "exit_code": "import sys\nprint('partial', end='')\nsys.exit(3)\n",
    "exception": "def main():\n    raise ValueError('boom')\nmain()\n",
    "excepthook": ("import sys\nsys.excepthook = lambda t, e, tb: print('one line:', e, file=sys.stderr)\n"
                   "raise OSError('x')\n"),
    "atexit_and_thread": ("import atexit, sys, threading, time\n"
                          "atexit.register(lambda: print('atexit ran', flush=True))\n"
                          "def late():\n    time.sleep(0.3)\n    print('thread ran', file=sys.stderr)\n"
                          "threading.Thread(target=late).start()\n"),
    "unclosed_file": "f = open('left.txt', 'w')\nf.write('buffered')\nprint(__name__, __file__.endswith('data.py'))\n",
    "argv_and_env": ("import json, os, sys\nprint(sys.argv[1:], os.environ.get('MEDSFT_X'), os.getcwd() == "
                     "os.path.dirname(__file__))\nprint(json.dumps(sorted(k for k in os.environ if 'MEDSFT_X' in k)))"
                     "\n"),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_forked_script_ends_as_a_fresh_interpreter_ends_it(tmp_path, ending, monkeypatch):
    monkeypatch.delenv("MEDSFT_TEST_NO_FORK", raising=False)
    runs = {}
    for how in ("fresh", "forked"):
        d = tmp_path / how
        d.mkdir()
        (d / "data.py").write_text(ENDINGS[ending], encoding="utf-8")  # a name the server forks
        cmd, env = [sys.executable, str(d / "data.py"), "--a=1", "b"], {**os.environ, "MEDSFT_X": how}
        assert forkserver._forkable(cmd, env, {"timeout": 60})
        run = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=60) if how == "fresh" \
            else forkserver.run(cmd, cwd=d, env=env, timeout=60)
        left = (d / "left.txt").read_text() if (d / "left.txt").exists() else None
        runs[how] = (run.returncode, run.stdout.replace(how, "HOW"), run.stderr.replace(str(d), "D"), left)
    assert runs["forked"] == runs["fresh"]


def test_what_a_library_reads_at_import_gets_a_fresh_interpreter(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSFT_TEST_NO_FORK", raising=False)
    script = [sys.executable, str(tmp_path / "train.py")]
    assert forkserver._forkable(script, {**os.environ, "MEDSFT_ANY": "1"}, {"timeout": 1})
    for name in ("PYTHONPATH", "HF_HOME", "OMP_NUM_THREADS", "TMPDIR"):
        assert not forkserver._forkable(script, {**os.environ, name: "/elsewhere"}, {})
    assert not forkserver._forkable(script, dict(os.environ), {"input": "q\n"})  # stdin given
    assert not forkserver._forkable([sys.executable, str(tmp_path / "rouge_eval.py")], dict(os.environ), {})
