"""Run a stage script exactly as `python SCRIPT ARGS...` would, recording what its Trainer built (bench/gpu_smoke.py).

    python bench/smoke_probe.py PROBE.json train.py --model=tiny ...

Writes PROBE.json (atomically, updated as training goes): the optimizer class and its bf16 stochastic-rounding
setting as the Trainer created them, the dtypes of the parameters it steps, and, on a resume, how many of the
optimizer's state tensors came back 8-bit from the checkpoint. The script itself runs unchanged (runpy, as
__main__), so its exit code, output and files are those of the real run. MEDSFT_SMOKE_DETERMINISTIC=1 asks torch
for deterministic kernels where it has them (warn-only elsewhere), so two runs can be compared bit for bit.
"""

import os
import runpy
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from medsft.files import write_json  # noqa: E402


def state_kinds(states) -> dict:
    """How many tensors of these per-parameter optimizer states are torchao 8-bit (OptimState8bit), how many plain."""
    counts = {"8bit": 0, "plain": 0}
    for state in states:
        for name, value in state.items():
            if name != "step":
                counts["8bit" if type(value).__name__ == "OptimState8bit" else "plain"] += 1
    return counts


def install(probe: Path) -> None:
    from transformers import Trainer

    record = {}
    create, load = Trainer.create_optimizer, getattr(Trainer, "_load_optimizer_and_scheduler", None)

    def create_optimizer(self, *args, **kwargs):
        opt = create(self, *args, **kwargs)
        inner = getattr(opt, "optimizer", opt)  # accelerate's wrapper, once prepared
        sr = getattr(inner, "bf16_stochastic_round", None)
        record.update(optimizer=f"{type(inner).__module__}.{type(inner).__qualname__}",
                      bf16_stochastic_round=None if sr is None else bool(sr) if isinstance(sr, int) else repr(sr),
                      param_dtypes=sorted({str(p.dtype) for g in inner.param_groups for p in g["params"]}))
        write_json(probe, record)
        return opt

    def load_optimizer_and_scheduler(self, checkpoint):
        load(self, checkpoint)
        if checkpoint:
            record["resumed_from"] = str(checkpoint)
            record["resumed_state"] = state_kinds(getattr(self.optimizer, "optimizer", self.optimizer).state.values())
            write_json(probe, record)

    Trainer.create_optimizer = create_optimizer
    if load is not None:  # a private hook: without it the resume record is missing, and gpu_smoke.py says so
        Trainer._load_optimizer_and_scheduler = load_optimizer_and_scheduler


def main():
    if len(sys.argv) < 3:
        raise SystemExit("usage: python bench/smoke_probe.py PROBE.json SCRIPT.py [--name=value ...]")
    probe, script, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if os.environ.get("MEDSFT_SMOKE_DETERMINISTIC") == "1":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    install(probe)
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` sets it
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
