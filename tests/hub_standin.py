"""A stand-in for ``modelscope.snapshot_download`` (the hubs are unreachable from tests): it serves a fake repo from
a folder, caches it like modelscope >= 1.38 (CACHE/<owner>--<name>/snapshots/<revision>/) and logs every call, so
a test sees exactly what the project asked ModelScope for.

In the test process: ``monkeypatch.setattr(modelscope, "snapshot_download", HubStandin(repo, cache, log))``.
In a subprocess, with the same three (and optional settings) as JSON in $HUB_STANDIN:

    python tests/hub_standin.py SCRIPT.py [ARGS...]    # run a stage script against the stand-in
    python tests/hub_standin.py --download SPEC        # call medsft.models.download(SPEC) and print the folder

There a fake ``modelscope`` module holds the stand-in (importing the real one takes seconds), and the hub counts as
reachable. Optional settings: ``delay`` (seconds a network download takes), ``barrier`` (a folder: the processes
of one launch start the script together, as torchrun's do, whatever their import times) with ``world`` processes,
and ``pg_timeout`` (seconds): torch.distributed.init_process_group runs with that timeout instead of the one it was
given, which is logged.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from pathlib import Path


class HubStandin:
    def __init__(self, repo, cache, log, delay: float = 0.0):
        self.repo, self.cache, self.log, self.delay = Path(repo), Path(cache), Path(log), delay

    def _record(self, entry: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as f:  # one write per line: processes append whole lines
            f.write(json.dumps({**entry, "pid": os.getpid(), "rank": os.environ.get("RANK")}) + "\n")

    def __call__(self, model_id=None, revision=None, local_files_only=False, allow_patterns=None,
                 allow_file_pattern=None, **kwargs):
        self._record({"model_id": model_id, "revision": revision, "local_files_only": bool(local_files_only),
                      "allow_patterns": allow_patterns, "allow_file_pattern": allow_file_pattern,
                      "other": sorted(kwargs)})
        folder = self.cache / model_id.replace("/", "--") / "snapshots" / (revision or "master")
        if local_files_only:
            if folder.is_dir() and any(folder.iterdir()):
                return str(folder)
            raise ValueError(f"Cannot find cached snapshot for {model_id}@{revision}")
        time.sleep(self.delay)
        patterns = allow_patterns or allow_file_pattern
        folder.mkdir(parents=True, exist_ok=True)
        for src in sorted(self.repo.iterdir()):
            if patterns and not any(fnmatch.fnmatch(src.name, p) for p in patterns):
                continue
            tmp = folder / f".{src.name}.incomplete"
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, folder / src.name)
        return str(folder)


def network_calls(log) -> list[dict]:
    """The logged calls that would have downloaded (not cache look-ups)."""
    lines = Path(log).read_text(encoding="utf-8").splitlines() if Path(log).is_file() else []
    return [c for c in map(json.loads, lines) if "model_id" in c and not c["local_files_only"]]


def _wait_for_all(folder: Path, world: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(folder.iterdir())) < world and time.monotonic() < deadline:
        time.sleep(0.05)


def _patch_process_group_timeout(seconds: float, log: Path) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    real = dist.init_process_group

    def init_process_group(*args, **kwargs):
        given = kwargs.get("timeout")
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"init_process_group_timeout_s": given.total_seconds() if given else None,
                                "pid": os.getpid()}) + "\n")
        return real(*args, **{**kwargs, "timeout": timedelta(seconds=seconds)})

    dist.init_process_group = init_process_group


def main(argv: list[str]) -> None:
    import runpy
    import types

    conf = json.loads(os.environ["HUB_STANDIN"])
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = HubStandin(conf["repo"], conf["cache"], conf["log"], conf.get("delay", 0.0))
    sys.modules["modelscope"] = fake
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medsft import models

    models.hub_problem = lambda *a, **k: None
    if argv[0] == "--download":
        print(models.download(argv[1]))
        return
    if conf.get("pg_timeout"):
        _patch_process_group_timeout(conf["pg_timeout"], Path(conf["log"]))
        if os.environ.get("RANK", "0") == "0":  # rank 0's estimate imports it while the others wait in a collective
            import transformers.models.qwen3.modeling_qwen3  # noqa: F401

    if conf.get("barrier"):
        _wait_for_all(Path(conf["barrier"]), int(conf.get("world", 1)))
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
