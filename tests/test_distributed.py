"""Context parallelism (simplicial_attn.parallel) against the single-process op.

One launch per world size (2, 3, 4 fresh processes, gloo, FileStore rendezvous in a tmp dir:
no ports; every wait bounded); each group runs every case and writes its chunks of the
outputs and gradients, plus its byte counters, to a file. The parent process then compares
the concatenated chunks with the single-process op on the whole sequence (same backend,
fp32, 1e-5 relative) and the bytes with halo sizes it works out by brute force from the
window definitions. Runtime: ~25 s on the 2-core CI machine under load, mostly start-up.
"""

import dataclasses
import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import simplicial_attn as sa
from simplicial_attn import backends
from simplicial_attn.parallel import comm_stats, two_simplicial_attention_cp

from cases import BOUNDS, Case, make_dout, make_inputs, rel_err

B, HQ, HKV, D = 2, 4, 2, 16  # GQA: two query heads per kv head
JOIN_TIMEOUT_S = 180  # whole spawn; collectives time out after COMM_TIMEOUT
COMM_TIMEOUT = datetime.timedelta(seconds=60)

# Chunk sizes per world size. Uneven ones include chunks of 1 and an empty chunk.
EVEN = {2: [12, 12], 3: [8, 8, 8], 4: [6, 6, 6, 6]}
UNEVEN = {2: [1, 20], 3: [9, 1, 11], 4: [5, 0, 12, 4]}
SKEWED = {2: [14, 7], 3: [3, 15, 3], 4: [2, 7, 1, 11]}


@dataclasses.dataclass(frozen=True)
class CpCase:
    name: str
    w1: int | None
    w2: int | None
    causal: bool
    splits: dict
    backend: str = "reference"
    strided: bool = False  # pass non-contiguous local chunks

    def global_case(self):
        return Case(B, sum(self.splits[2]), HQ, HKV, D, self.w1, self.w2, self.causal)


def _cases():
    cases = [
        CpCase("causal-short", 5, 3, True, EVEN),  # windows within one chunk
        CpCase("causal-long", 11, 4, True, UNEVEN),  # k1 halo spans several chunks
        CpCase("causal-w2-wider", 3, 9, True, SKEWED),  # k2 reaches further than k1
        CpCase("causal-w1-1", 1, 4, True, EVEN),  # no k1/v1 traffic at all
        CpCase("causal-unbounded", None, 6, True, SKEWED),
        CpCase("causal-both-unbounded", None, None, True, UNEVEN),
        CpCase("centred-short", 5, 4, False, EVEN),
        CpCase("centred-long", 13, 6, False, UNEVEN),
        CpCase("centred-unbounded", 7, None, False, EVEN),
    ]
    if not backends.get("cpu").not_supported_reasons("cpu", torch.float32):
        cases.append(CpCase("causal-cpu-kernel-strided", 6, 3, True, SKEWED, backend="cpu", strided=True))
    return cases


CASES = _cases()
SUBGROUP = (1, 3)  # in the 4-process run, these two ranks also run as a group of their own
SUBGROUP_CASES = ("causal-long", "centred-long")


# ---- worker side (runs in the spawned processes) ----------------------------------------


def _local_inputs(case, offsets, r):
    full = make_inputs(case.global_case(), torch.float32, seed=7)
    dout = make_dout(case.global_case(), torch.float32, seed=8)
    lo, hi = offsets[r], offsets[r + 1]
    if case.strided:  # leaves laid out [B, H, N, D]; the op sees [B, N, H, D] views
        leaves = [t[:, lo:hi].transpose(1, 2).contiguous().requires_grad_() for t in full]
        return leaves, [t.transpose(1, 2) for t in leaves], dout[:, lo:hi]
    leaves = [t[:, lo:hi].clone().requires_grad_() for t in full]
    return leaves, leaves, dout[:, lo:hi]


def _run_case(case, sizes, group, rank):
    offsets = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    leaves, inputs, dout = _local_inputs(case, offsets, rank)
    comm_stats().reset()
    out = two_simplicial_attention_cp(
        *inputs, w1=case.w1, w2=case.w2, causal=case.causal, group=group, backend=case.backend
    )
    out.backward(dout)
    grads = [t.grad.transpose(1, 2) if case.strided else t.grad for t in leaves]
    return {"out": out.detach(), "grads": grads, "stats": dataclasses.asdict(comm_stats())}


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    # Poison: every torch.empty (receive buffers, extended sequences) starts as NaN, so a row
    # the exchange forgets to fill fails the comparison.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=COMM_TIMEOUT
    )
    try:
        records = {}
        for case in CASES:
            records[("world", case.name)] = _run_case(case, case.splits[world], None, rank)
        if world == 4:
            sub = dist.new_group(list(SUBGROUP))
            if rank in SUBGROUP:
                for case in CASES:
                    if case.name in SUBGROUP_CASES:
                        sizes = case.splits[2]
                        records[("subgroup", case.name)] = _run_case(case, sizes, sub, SUBGROUP.index(rank))
        q, k1, k2, v1, v2 = make_inputs(Case(1, 4, 2, 1, 16, 3, 3), seed=rank)
        try:  # rank 1 disagrees about w1: every rank must get the error, none may hang
            two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=4 + (rank == 1), w2=3)
            records["mismatch"] = None
        except ValueError as e:
            records["mismatch"] = str(e)
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# ---- parent side ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"world{w}")
def run(request, tmp_path_factory):
    """Spawn `world` processes once; return (world, {rank: records})."""
    world = request.param
    tmp = tmp_path_factory.mktemp(f"cp{world}")
    # Fresh processes forked from a forkserver that imported torch (and torch._dynamo, which
    # the first custom-op call pulls in) once: ~7 s of imports per process saved. The server
    # is a clean single-threaded interpreter, so forking it is safe, unlike forking pytest.
    mp.get_context("forkserver").set_forkserver_preload(
        ["torch", "torch._dynamo", "simplicial_attn", _worker.__module__]
    )
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the forkserver and its children
        ctx = mp.start_processes(
            _worker,
            args=(world, str(tmp / "rendezvous"), str(tmp)),
            nprocs=world,
            join=False,
            start_method="forkserver",
        )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process run did not finish within {JOIN_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return world, {r: torch.load(tmp / f"rank{r}.pt") for r in range(world)}


_REFERENCE = {}


def _single_process(case):
    """Output and the five gradients of the single-process op on the whole sequence."""
    if case.name not in _REFERENCE:
        inputs = make_inputs(case.global_case(), torch.float32, seed=7, requires_grad=True)
        out = sa.two_simplicial_attention(*inputs, w1=case.w1, w2=case.w2, causal=case.causal, backend=case.backend)
        out.backward(make_dout(case.global_case(), torch.float32, seed=8))
        _REFERENCE[case.name] = (out.detach(), [t.grad for t in inputs])
    return _REFERENCE[case.name]


def _runs(world, records):
    """(label, case, sizes, per-member records in group order) for every run of the spawn."""
    for case in CASES:
        yield "world", case, case.splits[world], [records[r][("world", case.name)] for r in range(world)]
        if world == 4 and case.name in SUBGROUP_CASES:
            yield "subgroup", case, case.splits[2], [records[r][("subgroup", case.name)] for r in SUBGROUP]


def test_matches_single_process(run):
    world, records = run
    bound = BOUNDS[torch.float32]
    for label, case, sizes, members in _runs(world, records):
        ref_out, ref_grads = _single_process(case)
        out = torch.cat([m["out"] for m in members], dim=1)
        assert out.shape == ref_out.shape
        errors = {"out": rel_err(out, ref_out)}
        for i, name in enumerate(("dq", "dk1", "dk2", "dv1", "dv2")):
            errors[name] = rel_err(torch.cat([m["grads"][i] for m in members], dim=1), ref_grads[i])
        bad = {k: v for k, v in errors.items() if not v <= bound}
        assert not bad, f"{label} {case.name} chunks {sizes}: rel err above {bound}: {bad}"


def _halo_rows(sizes, w, causal):
    """Per rank: (rows it must receive, rows it must send), by brute force over the window table."""
    offsets = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    n = offsets[-1]

    def in_window(i, j):
        if w is None:
            return j <= i if causal else True
        if causal:
            return i - w < j <= i
        return i - w // 2 <= j <= i - w // 2 + w - 1

    owner = [r for r, size in enumerate(sizes) for _ in range(size)]
    needs = [
        {j for i in range(offsets[r], offsets[r + 1]) for j in range(n) if in_window(i, j)} for r in range(len(sizes))
    ]
    recv = [sum(owner[j] != r for j in needs[r]) for r in range(len(sizes))]
    send = [sum(owner[j] == m for r in range(len(sizes)) if r != m for j in needs[r]) for m in range(len(sizes))]
    return recv, send


def test_traffic_is_the_halo(run):
    """Each rank sends exactly the k/v rows its peers' windows reach (and their gradients back)."""
    world, records = run
    row_bytes = B * HKV * D * 4  # one position of one fp32 tensor
    for label, case, sizes, members in _runs(world, records):
        recv1, send1 = _halo_rows(sizes, case.w1, case.causal)  # k1 and v1
        recv2, send2 = _halo_rows(sizes, case.w2, case.causal)  # k2 and v2
        for r, m in enumerate(members):
            expected_recv = 2 * row_bytes * (recv1[r] + recv2[r])
            expected_send = 2 * row_bytes * (send1[r] + send2[r])
            got = m["stats"]
            where = f"{label} {case.name} chunks {sizes} rank {r}"
            assert got["halo_sent"] == expected_send, where
            assert got["halo_received"] == expected_recv, where
            assert got["grad_sent"] == expected_recv, where
            assert got["grad_received"] == expected_send, where
            assert got["layout_gathers"] == 1, where


def test_mismatched_settings_raise_on_every_rank(run):
    world, records = run
    for r in range(world):
        message = records[r]["mismatch"]
        assert message is not None, f"rank {r} did not raise"
        assert "same w1" in message and "rank 1: 5" in message and "rank 0: 4" in message, message


def test_needs_an_initialised_process_group():
    q, k1, k2, v1, v2 = make_inputs(Case(1, 4, 2, 1, 16, 3, 3))
    with pytest.raises(RuntimeError, match="init_process_group"):
        two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=3, w2=3)


def test_bad_arguments_fail_before_any_communication():
    q, k1, k2, v1, v2 = make_inputs(Case(1, 4, 2, 1, 16, 3, 3))
    with pytest.raises(ValueError, match="w1"):
        two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=0, w2=3)
    with pytest.raises(ValueError, match="backend"):
        two_simplicial_attention_cp(q, k1, k2, v1, v2, backend="tpu")


def test_single_rank_group_is_the_local_op(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, timeout=COMM_TIMEOUT
    )
    try:
        inputs = make_inputs(Case(2, 9, 4, 2, 16, 4, 3), seed=3)
        out = two_simplicial_attention_cp(*inputs, w1=4, w2=3, backend="reference")
        ref = sa.two_simplicial_attention(*inputs, w1=4, w2=3, backend="reference")
        assert torch.equal(out, ref)
    finally:
        dist.destroy_process_group()
