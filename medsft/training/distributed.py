"""Several processes training one model (``torchrun --nproc_per_node N``, ``accelerate launch``): which process is
which, the engine (DDP, DeepSpeed ZeRO-2/3, FSDP2) and the global batch, one process group started before the
preflight, and rank 0 alone doing the bookkeeping while the others wait for its outcome.

Rank 0 runs the preflight (``--overwrite`` deletions, resume choice, fingerprint, lock) and writes every output
(results, charts, configs, SwanLab, preview). ``on_main`` runs such work on rank 0 and hands its outcome to every
rank, an error included, so no rank waits forever at a barrier for a rank that already failed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from ..files import MedsftError

# torch is imported inside the functions: importing this module stays fast (train.py --help).

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("ddp", "zero2", "zero3", "fsdp2")
SHARDED = ("zero3", "fsdp2")  # engines whose weights live split across the GPUs between forward passes
ENGINE_CONFIGS = {"zero2": "configs/ds_zero2.json", "zero3": "configs/ds_zero3.json", "fsdp2": "configs/fsdp2.json"}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Longest wait in a collective before the run fails: rank 0 saving an 8B checkpoint, a node still downloading the model
# (transformers' ddp_timeout default; torch's NCCL default, 10 minutes, is too short for either)
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


def world_size() -> int:
    """Processes of this launch (torchrun and accelerate launch set WORLD_SIZE in each one); 1 when run plainly."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Rank 0, the one process that writes outputs, prints and talks to SwanLab."""
    return rank() == 0


def _zero_stage(path: str) -> int:
    """The ZeRO stage of a DeepSpeed JSON config (0 when it names none)."""
    try:
        conf = json.loads(Path(path).read_text(encoding="utf-8"))
        return int((conf.get("zero_optimization") or {}).get("stage", 0))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise MedsftError(f"--engine={path}: not a readable DeepSpeed JSON config ({e}); use one of "
                          "configs/ds_zero2.json, configs/ds_zero3.json or --engine=zero2|zero3") from None


def resolve_engine(cfg: dict) -> dict:
    """``{"ENGINE": single|ddp|zero2|zero3|fsdp2, "DEEPSPEED": path or None, "WORLD_SIZE": n}`` for this launch.

    ENGINE auto follows the launcher: ``accelerate launch --config_file`` with a DeepSpeed or FSDP config says so
    in its environment; torchrun (or accelerate's plain multi-GPU config) means DDP. A DeepSpeed JSON path is
    accepted in place of zero2/zero3. The dry run of one process estimates for DRY_RUN_GPUS GPUs.
    """
    world = world_size()
    if cfg.get("DRY_RUN") and world == 1:
        world = max(int(cfg.get("DRY_RUN_GPUS") or 1), 1)
    choice = str(cfg.get("ENGINE", "auto") or "auto")
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
    """``{"GRAD_ACCUM": n, "EXAMPLES_PER_STEP": m}``: with GLOBAL_BATCH > 0, GRAD_ACCUM is derived so that
    BATCH_SIZE x GRAD_ACCUM x processes = GLOBAL_BATCH whatever the number of GPUs (one schedule for 1 and 4 GPUs)."""
    per_pass = cfg["BATCH_SIZE"] * world
    glob = int(cfg.get("GLOBAL_BATCH") or 0)
    if glob < 0:
        raise MedsftError(f"--global_batch={glob}: must be 0 (off) or the examples per optimizer step")
    if glob:
        if glob % per_pass:
            raise MedsftError(f"--global_batch={glob} is not a multiple of --batch_size={cfg['BATCH_SIZE']} x "
                              f"{world} process(es) = {per_pass}: pick a multiple of {per_pass}, or change "
                              "--batch_size")
        accum = glob // per_pass
    else:
        accum = cfg["GRAD_ACCUM"]
    return {"GRAD_ACCUM": accum, "EXAMPLES_PER_STEP": per_pass * accum}


def _die_with_launcher() -> None:
    """A kill -9 of torchrun would leave its workers training on as orphans that hold OUTPUT_DIR; Linux kills
    them with their parent instead (what kill -9 of the launcher means). No-op elsewhere."""
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


def start() -> None:
    """Join the launch's process group before the preflight (a no-op for a plain ``python train.py``).

    Refuses a launch whose processes would not form one run: more processes on a node than GPUs, or a process
    group that does not hold every process. On CPU the group uses gloo (tests, CI); on GPUs NCCL, one GPU per
    process. Ranks other than 0 stop printing: rank 0 speaks for the run (errors still reach stderr). A process
    waits at most PROCESS_GROUP_TIMEOUT in a collective.
    """
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
    """Join DeepSpeed's communication to the process group (before from_pretrained under ZeRO-3: zero.Init counts
    the processes through it).

    On CPU (tests, CI) DeepSpeed would first JIT-compile its shared-memory allreduce (~100 s with g++ and ninja);
    gloo does the same job for runs this small, so that op is marked unavailable there. DeepSpeed keeps the table
    of available ops in one module dict and reads it at that moment.
    """
    import deepspeed
    import torch

    if not torch.cuda.is_available():
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(timeout=PROCESS_GROUP_TIMEOUT)


def stop_process_group() -> None:
    """End the process group once a run has finished on every rank. Left to interpreter teardown, a gloo group
    aborts the process now and then ("terminate called without an active exception", pytorch/pytorch#190489).
    Not on an error path: there a rank may still wait in a collective, and ending the group would hang it."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(obj):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only; every rank returns its result. An error or exit on rank 0 is re-raised on
    every rank (a MedsftError with its message, SystemExit with its code), so all stop together."""
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
    """After TrainingArguments set up the devices: a multi-process launch must have become one distributed run,
    never N independent copies of the whole training."""
    world = world_size()
    if world == 1:
        return
    from transformers.training_args import ParallelMode

    if args.parallel_mode != ParallelMode.DISTRIBUTED or args.world_size != world:
        raise MedsftError(f"{world} processes were launched but the Trainer runs them as {args.world_size} "
                          f"independent copies ({args.parallel_mode}): launch with torchrun or accelerate launch, "
                          "and on CPU leave ACCELERATE_USE_CPU unset or true")
