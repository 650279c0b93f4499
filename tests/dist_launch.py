"""Launching a group of gloo processes from a test: fresh processes, bounded waits, results by file.

    records = launch(worker, world=4, tmp=tmp_path, args=(...))   # {rank: whatever the worker saved}

`worker(rank, world, init_file, out_dir, *args)` runs in each process: `init_group` joins the
group (FileStore rendezvous in a tmp dir: no ports), the worker saves its results with
`save(out_dir, rank, obj)`, and the parent gets them back. Processes are forked from a
forkserver that imported torch (and torch._dynamo, which the first custom-op call pulls in),
simplicial_attn and the worker's module once: ~7 s of imports per process saved. The server is
a clean single-threaded interpreter, so forking it is safe, unlike forking pytest.
"""

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COMM_TIMEOUT = datetime.timedelta(seconds=120)  # any collective that waits longer fails the run


def init_group(rank, world, init_file):
    torch.set_num_threads(1)
    # What torchrun would set: transformers reads the world size from the environment (tp_plan="auto").
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=COMM_TIMEOUT
    )


def save(out_dir, rank, obj):
    torch.save({"record": obj, "cpu_s": time.process_time()}, os.path.join(out_dir, f"rank{rank}.pt"))


def launch(worker, world, tmp, args=(), timeout_s=300, preload=()):
    """Runs `worker` in `world` fresh processes; returns {rank: saved object}. Fails the test if the
    group does not finish within `timeout_s` (every process is then terminated)."""
    mp.get_context("forkserver").set_forkserver_preload(
        ["torch", "torch._dynamo", "torch.distributed.tensor", "simplicial_attn", *preload, worker.__module__]
    )
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the forkserver and its children
        ctx = mp.start_processes(
            worker, args=(world, str(tmp / "rendezvous"), str(tmp), *args), nprocs=world, join=False,
            start_method="forkserver",
        )  # fmt: skip
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process run did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    saved = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
    # The cost of the launch (pytest -s shows it): what a 2-core CI machine pays is about the CPU time / 2.
    print(f"{worker.__module__}: {world} processes, {sum(s['cpu_s'] for s in saved):.0f} CPU s, "
          f"{time.monotonic() - start:.0f} s wall")  # fmt: skip
    return {r: s["record"] for r, s in enumerate(saved)}
