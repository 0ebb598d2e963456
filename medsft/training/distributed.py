"""Several processes training one model (torchrun, accelerate launch): which process is which, the engine (DDP,
DeepSpeed ZeRO-2/3, FSDP2) and global batch, and rank 0 alone doing the bookkeeping while the others wait for its
outcome (an error included, so no rank waits forever). torch is imported inside the functions."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from ..config import Config
from ..files import MedsftError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("ddp", "zero2", "zero3", "fsdp2")
SHARDED = ("zero3", "fsdp2")  # engines whose weights live split across the GPUs between forward passes
ENGINE_CONFIGS = {"zero2": "configs/ds_zero2.json", "zero3": "configs/ds_zero3.json", "fsdp2": "configs/fsdp2.json"}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Longest wait in a collective (rank 0 saving an 8B checkpoint, a slow download): torch's 10 minutes are too short
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)

def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)

def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)

def is_main() -> bool:
    """Rank 0, the one process that writes outputs, prints and talks to SwanLab."""
    return rank() == 0

def _zero_stage(path: str) -> int:
    try:
        conf = json.loads(Path(path).read_text(encoding="utf-8"))
        return int((conf.get("zero_optimization") or {}).get("stage", 0))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise MedsftError(f"--engine={path}: not a readable DeepSpeed JSON config ({e}); use one of "
                          "configs/ds_zero2.json, configs/ds_zero3.json or --engine=zero2|zero3") from None

def resolve_engine(cfg: dict) -> dict:
    """``{"ENGINE", "DEEPSPEED", "WORLD_SIZE"}`` of this launch: auto follows accelerate launch's DeepSpeed or FSDP
    config, else DDP under torchrun; a DeepSpeed JSON path stands for zero2/zero3; a dry run counts DRY_RUN_GPUS."""
    cfg = Config.of(cfg)
    world = world_size()
    if cfg.get("DRY_RUN") and world == 1:
        world = max(int(cfg.get("DRY_RUN_GPUS") or 1), 1)
    choice = str(cfg.get("ENGINE") or "auto")
    deepspeed = None
    if choice == "auto":
        env_ds = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            if not env_ds:
                raise MedsftError("accelerate launch set up DeepSpeed without a config file: use one of "
                                  "configs/accelerate/zero2.yaml, zero3.yaml (they name configs/ds_zero*.json)")
            choice = env_ds
        elif os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
            choice = "fsdp2"
        else:
            choice = "ddp" if world > 1 else "single"
    if choice.endswith(".json"):
        if not Path(choice).is_file() and (PROJECT_ROOT / choice).is_file():
            choice = str(PROJECT_ROOT / choice)  # accelerate's configs name configs/ds_zero*.json from the root
        stage = _zero_stage(choice)
        if stage not in (2, 3):
            raise MedsftError(f"--engine={choice}: ZeRO stage {stage}; the supported stages are 2 and 3 "
                              "(configs/ds_zero2.json, configs/ds_zero3.json)")
        deepspeed, choice = choice, f"zero{stage}"
    elif choice in ("zero2", "zero3"):
        deepspeed = str(PROJECT_ROOT / ENGINE_CONFIGS[choice])
    elif choice not in ENGINES + ("single",):
        raise MedsftError(f"--engine={choice}: expected auto, {', '.join(ENGINES)} or a DeepSpeed JSON path")
    elif choice == "ddp" and world == 1:
        choice = "single"  # the Trainer wraps nothing in DDP for one process
    if choice in ("zero2", "zero3"):
        import importlib.util
        if importlib.util.find_spec("deepspeed") is None and not cfg.get("DRY_RUN"):
            raise MedsftError(f"--engine={choice} needs DeepSpeed, which is not installed: pip install -r "
                              "requirements-scale.txt (see docs/scale.md), or use --engine=ddp")
    return {"ENGINE": choice, "DEEPSPEED": deepspeed, "WORLD_SIZE": world}

def resolve_batch(cfg: dict, world: int) -> dict:
    """``{"GRAD_ACCUM", "EXAMPLES_PER_STEP"}``; GLOBAL_BATCH > 0 derives GRAD_ACCUM (1 and 4 GPUs, one schedule)."""
    cfg = Config.of(cfg)
    per_pass = cfg.batch_size * world
    glob = int(cfg.get("GLOBAL_BATCH") or 0)
    if glob < 0:
        raise MedsftError(f"--global_batch={glob}: must be 0 (off) or the examples per optimizer step")
    if glob:
        if glob % per_pass:
            raise MedsftError(f"--global_batch={glob} is not a multiple of --batch_size={cfg.batch_size} x "
                              f"{world} process(es) = {per_pass}: pick a multiple of {per_pass}, or change "
                              "--batch_size")
        accum = glob // per_pass
    else:
        accum = cfg.grad_accum
    return {"GRAD_ACCUM": accum, "EXAMPLES_PER_STEP": per_pass * accum}

def _die_with_launcher() -> None:
    """Linux kills a worker with its launcher (kill -9 of torchrun must not leave orphans holding OUTPUT_DIR)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)

def join() -> None:
    """Join the launch's process group (gloo on CPU, NCCL with one GPU per process), refusing a launch whose
    processes would not form one run; ranks other than 0 stop printing."""
    world = world_size()
    if world == 1:
        return
    import torch
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", rank()))
    cuda = torch.cuda.is_available()
    if cuda and local >= torch.cuda.device_count():
        raise MedsftError(f"process {rank()} (local rank {local}) has no GPU: {torch.cuda.device_count()} visible; "
                          "launch at most one process per GPU (--nproc_per_node / --num_processes)")
    if "MASTER_ADDR" not in os.environ:
        raise MedsftError(f"WORLD_SIZE={world} is set but MASTER_ADDR is not: launch with torchrun "
                          "--nproc_per_node N or accelerate launch, which set both")
    _die_with_launcher()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    if dist.get_world_size() != world:
        raise MedsftError(f"the process group holds {dist.get_world_size()} processes but WORLD_SIZE={world}: "
                          "relaunch with torchrun or accelerate launch")
    if not is_main():
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process

def start_deepspeed() -> None:
    """Join DeepSpeed's communication to the process group (before from_pretrained under ZeRO-3)."""
    import deepspeed
    import torch
    if not torch.cuda.is_available():  # skip JIT-compiling the shared-memory allreduce (~100 s): gloo does it
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(timeout=PROCESS_GROUP_TIMEOUT)

def stop_process_group(trainer=None) -> None:
    """End the process group once every rank finished (gloo may abort at teardown otherwise, pytorch/pytorch#190489);
    never on an error path, where a rank may still wait in a collective. ``trainer``'s DDP wrapper goes first: its
    Reducer must not hold the group's last reference, whose destructor then waits, holding the GIL, on a gloo worker
    thread that needs the GIL (a rare hang at exit, more likely under CPU load; pytorch/pytorch#56297)."""
    if world_size() > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            if trainer is not None:
                trainer.model_wrapped = trainer.model
                trainer.accelerator.free_memory()  # drops the accelerator's references, then collects
            dist.destroy_process_group()

def _broadcast(obj):
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

def on_main(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only; every rank returns its result, or re-raises its error or exit."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    outcome = None
    if is_main():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except MedsftError as e:
            _broadcast(("error", str(e)))
            raise
        except SystemExit as e:
            _broadcast(("exit", e.code))
            raise
        except BaseException as e:
            _broadcast(("crash", f"{type(e).__name__}: {e}"))
            raise
    outcome = _broadcast(outcome)
    kind, value = outcome
    if kind == "ok":
        return value
    if kind == "exit":
        raise SystemExit(value)
    if kind == "error":  # rank 0 has printed it: one message, not one per process
        raise SystemExit(1)
    raise MedsftError(f"rank 0 failed ({value}); its traceback is above")

def any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is true on any rank (a collective: every rank must call it at the same point)."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

def check_launch(args) -> None:
    """A multi-process launch must have become one distributed run, never N independent copies."""
    world = world_size()
    if world == 1:
        return
    from transformers.training_args import ParallelMode
    if args.parallel_mode != ParallelMode.DISTRIBUTED or args.world_size != world:
        raise MedsftError(f"{world} processes were launched but the Trainer runs them as {args.world_size} "
                          f"independent copies ({args.parallel_mode}): launch with torchrun or accelerate launch, "
                          "and on CPU leave ACCELERATE_USE_CPU unset or true")
