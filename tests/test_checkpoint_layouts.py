"""checkpoint_problem knows every checkpoint layout the Trainer writes (issue 22): one process, DDP, DeepSpeed, FSDP
full and sharded state dicts. FSDP and DeepSpeed cannot run on CPU, so their folders are laid out here from the
file names transformers' Trainer, accelerate's save_fsdp_model/save_fsdp_optimizer and DeepSpeed's engine use; the
files themselves are real torch.save / safetensors / torch.distributed.checkpoint files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _torch_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": torch.arange(64, dtype=torch.float32)}, path)


def _safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(8, 8)}, path)


def _dcp_dir(path: Path, key: str) -> None:
    """A torch.distributed.checkpoint folder as accelerate writes under SHARDED_STATE_DICT (.metadata + .distcp)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... save in a single process"
        dcp.save({key: {"w": torch.ones(16)}}, storage_writer=dcp.FileSystemWriter(str(path)))


def _common(p: Path, ranks: int) -> None:
    """What every layout shares: the finished marker, the config, the Trainer's training_args.bin, RNG states."""
    p.mkdir(parents=True)
    (p / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": []}))
    (p / "config.json").write_text("{}")
    _torch_file(p / "training_args.bin")
    for name in (["rng_state.pth"] if ranks == 1 else [f"rng_state_{r}.pth" for r in range(ranks)]):
        _torch_file(p / name)


def single(p: Path) -> None:
    _common(p, 1)
    _safetensors(p / "model.safetensors")
    _torch_file(p / "optimizer.pt")
    _torch_file(p / "scheduler.pt")


def sharded_weights(p: Path) -> None:
    _common(p, 1)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name in shards:
        _safetensors(p / name)
    (p / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    _torch_file(p / "optimizer.pt")
    _torch_file(p / "scheduler.pt")


def lora(p: Path) -> None:
    _common(p, 1)
    (p / "adapter_config.json").write_text("{}")
    _safetensors(p / "adapter_model.safetensors")
    _torch_file(p / "optimizer.pt")
    _torch_file(p / "scheduler.pt")


def ddp(p: Path) -> None:
    _common(p, 2)
    _safetensors(p / "model.safetensors")
    _torch_file(p / "optimizer.pt")
    _torch_file(p / "scheduler.pt")
    _torch_file(p / "scaler.pt")  # fp16: the Trainer saves the grad scaler too


def zero2(p: Path) -> None:
    _common(p, 2)
    _safetensors(p / "model.safetensors")
    (p / "latest").write_text("global_step4")
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        _torch_file(p / "global_step4" / name)
    (p / "zero_to_fp32.py").write_text("# DeepSpeed's converter\n")
    _torch_file(p / "scheduler.pt")  # the Trainer's own scheduler (no "scheduler" in the DeepSpeed config)


def zero3_ungathered(p: Path) -> None:
    """ZeRO-3 without stage3_gather_16bit_weights_on_model_save, and DeepSpeed's own scheduler: the weights live
    only in the engine's files and no scheduler.pt is written."""
    _common(p, 2)
    (p / "latest").write_text("global_step4\n")
    for r in range(2):
        _torch_file(p / "global_step4" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        _torch_file(p / "global_step4" / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")


def fsdp_full(p: Path) -> None:
    _common(p, 2)
    _safetensors(p / "model.safetensors")  # Trainer.save_model gathers the weights under FULL_STATE_DICT
    _torch_file(p / "pytorch_model_fsdp.bin")
    _torch_file(p / "optimizer.bin")
    _torch_file(p / "scheduler.pt")


def fsdp_sharded(p: Path) -> None:
    _common(p, 2)
    _dcp_dir(p / "pytorch_model_fsdp_0", "model")
    _dcp_dir(p / "optimizer_0", "optimizer")
    _torch_file(p / "scheduler.pt")


LAYOUTS = {f.__name__: f for f in (single, sharded_weights, lora, ddp, zero2, zero3_ungathered, fsdp_full,
                                     fsdp_sharded)}


def _truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_the_trainer_writes_is_accepted(tmp_path, layout):
    from medsft.training.checkpoints import checkpoint_problem

    p = tmp_path / "checkpoint-4"
    LAYOUTS[layout](p)
    assert checkpoint_problem(p) is None


# (layout, file damaged, how, what the reason names): each is a file that resuming this layout loads
DAMAGE = [
    ("ddp", "rng_state_1.pth", "truncate", "rng_state_1.pth"),
    ("ddp", "rng_state_0.pth", "delete", "rng_state_0.pth"),
    ("ddp", "scaler.pt", "truncate", "scaler.pt"),
    ("zero2", "global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt", "truncate", "zero_pp_rank_1_mp_rank_00"),
    ("zero2", "global_step4/mp_rank_00_model_states.pt", "delete", "_model_states.pt"),
    ("zero3_ungathered", "global_step4/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "delete",
     "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    ("zero3_ungathered", "latest", "delete", "model.safetensors"),  # read as one process: no weights there
    ("fsdp_full", "optimizer.bin", "truncate", "optimizer.bin"),
    ("fsdp_full", "pytorch_model_fsdp.bin", "truncate", "pytorch_model_fsdp.bin"),
    ("fsdp_full", "scheduler.pt", "delete", "scheduler.pt"),
    ("fsdp_sharded", "pytorch_model_fsdp_0/.metadata", "delete", "pytorch_model_fsdp_0/.metadata"),
    ("fsdp_sharded", "optimizer_0/.metadata", "truncate", "optimizer_0/.metadata"),
    ("fsdp_sharded", "optimizer_0/__0_0.distcp", "delete", "optimizer_0/ holds no .distcp"),
]


@pytest.mark.parametrize("layout,name,how,named", DAMAGE)
def test_a_damaged_file_of_each_layout_is_named(tmp_path, layout, name, how, named):
    from medsft.training.checkpoints import checkpoint_problem

    p = tmp_path / "checkpoint-4"
    LAYOUTS[layout](p)
    _truncate(p / name) if how == "truncate" else (p / name).unlink()
    why = checkpoint_problem(p)
    assert why and named in why, why


def test_a_layout_without_its_optimizer_state_is_refused(tmp_path):
    """No optimizer state at all: the Trainer would silently resume with fresh Adam moments."""
    from medsft.training.checkpoints import checkpoint_problem

    for layout, name, named in (("fsdp_full", "optimizer.bin", "optimizer*.bin"), ("single", "optimizer.pt", None)):
        p = tmp_path / layout / "checkpoint-4"
        LAYOUTS[layout](p)
        (p / name).unlink()
        why = checkpoint_problem(p)
        assert why and (named or name) in why, why  # the file missing (FSDP: the names it may have)
    p = tmp_path / "sharded" / "checkpoint-4"
    fsdp_sharded(p)
    shutil.rmtree(p / "optimizer_0")
    assert "optimizer_0" in (checkpoint_problem(p) or "")  # the folder missing


def test_a_read_error_makes_a_checkpoint_unreadable_not_a_traceback(tmp_path, monkeypatch):
    import errno
    import io

    from medsft.training.checkpoints import checkpoint_problem

    p = tmp_path / "checkpoint-4"
    fsdp_full(p)
    real_open = io.open

    def failing_open(file, *args, **kwargs):
        if Path(str(file)).name == "optimizer.bin":
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", failing_open)
    monkeypatch.setattr("builtins.open", failing_open)
    why = checkpoint_problem(p)
    assert why and "optimizer.bin" in why and "Stale file handle" in why, why
