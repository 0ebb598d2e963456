"""Loaded by every process of a torchrun launch in the tests (PYTHONPATH=tests/exit_check). Writes a line starting
"EXIT-CHECK:" to stderr when a finished run ends its process group badly:
- left to interpreter teardown: gloo then aborts the process now and then ("terminate called without an active
  exception", exit -6; pytorch/pytorch#190489);
- destroyed while a DDP model still lives: its Reducer then holds the group's last reference, and gloo's destructor,
  run with the GIL held, can wait forever on a worker thread that needs the GIL (pytorch/pytorch#56297): the
  two-process GRPO run hung at exit in 2 of 25 tries beside a CPU load before the fix (docs/scale.md)."""
import atexit
import gc
import sys

import torch.distributed as dist


def _at_exit():
    if dist.is_available() and dist.is_initialized():
        sys.stderr.write("EXIT-CHECK: process group still up at exit\n")


def _checked(destroy):
    def destroy_process_group(*args, **kwargs):
        from torch.nn.parallel import DistributedDataParallel

        gc.collect()
        alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        if alive:
            sys.stderr.write(f"EXIT-CHECK: {alive} DDP model(s) alive when the process group ends\n")
        return destroy(*args, **kwargs)
    return destroy_process_group


if dist.is_available():
    dist.destroy_process_group = _checked(dist.destroy_process_group)
    atexit.register(_at_exit)
