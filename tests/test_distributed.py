"""Context parallelism (simplicial_attn.parallel) and the ops on DTensors, against the single-process op.

One launch per world size (2, 3, 4 fresh processes, gloo, tests/dist_launch.py; one test each, so
a parallel test run never starts a launch twice); each group
runs every case and writes its chunks of the outputs and gradients, plus its byte counters,
to a file. The parent process then compares the concatenated chunks with the single-process
op on the whole sequence (same backend, fp32, 1e-5 relative) and the bytes with halo sizes it
works out by brute force from the window definitions (and documents, packed). The same launches
run standard attention under context parallelism (`dot_product_attention_cp`, the SDPA layers
of a model) and, for 2 and 4 processes, the ops on DTensor inputs (heads, batch, replicated;
a 2-D mesh; the refused placements). Runtime: ~35 s on the 2-core CI machine, mostly start-up.
"""

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import simplicial_attn as sa
from simplicial_attn import backends
from simplicial_attn.parallel import comm_stats, dot_product_attention_cp, two_simplicial_attention_cp

from cases import BOUNDS, Case, make_dout, make_inputs, rel_err
from dist_launch import init_group, launch, save

B, HQ, HKV = 2, 4, 2  # GQA: two query heads per kv head

# Chunk sizes per world size. Uneven ones include chunks of 1 and an empty chunk.
EVEN = {2: [12, 12], 3: [8, 8, 8], 4: [6, 6, 6, 6]}
UNEVEN = {2: [1, 20], 3: [9, 1, 11], 4: [5, 0, 12, 4]}
SKEWED = {2: [14, 7], 3: [3, 15, 3], 4: [2, 7, 1, 11]}
# Packings of the 24 / 21 tokens: a boundary inside a chunk, documents across ranks, a boundary
# exactly at a chunk edge (12 for 2 and 4 ranks), an empty document.
DOCS_24 = (0, 5, 12, 12, 19, 24)
DOCS_21 = (0, 9, 21)
DOCS_21B = (0, 3, 4, 16, 21)


@dataclasses.dataclass(frozen=True)
class CpCase:
    name: str
    w1: int | None
    w2: int | None
    causal: bool
    splits: dict
    backend: str = "reference"
    strided: bool = False  # pass non-contiguous local chunks
    logits: str = "trilinear"
    documents: tuple | None = None  # packed: the global cu_seqlens
    mesh: bool = False  # pass the group as a 1-D DeviceMesh
    D: int = 16

    def global_case(self):
        batch = 1 if self.documents else B
        return Case(batch, sum(self.splits[2]), HQ, HKV, self.D, self.w1, self.w2, self.causal)


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
        CpCase("determinant", 5, 4, True, SKEWED, logits="determinant", D=12),
        CpCase("packed-causal", 6, 3, True, EVEN, documents=DOCS_24),
        CpCase("packed-centred-long", 13, 5, False, UNEVEN, documents=DOCS_21),
        CpCase(
            "packed-determinant-mesh", None, 4, True, SKEWED, logits="determinant", documents=DOCS_21B, mesh=True, D=12
        ),  # fmt: skip
    ]
    if not backends.get("cpu").not_supported_reasons("cpu", torch.float32):
        cases.append(CpCase("causal-cpu-kernel-strided", 6, 3, True, SKEWED, backend="cpu", strided=True))
        cases.append(CpCase("packed-cpu-kernel", 5, 3, True, EVEN, backend="cpu", documents=DOCS_24))
    return cases


@dataclasses.dataclass(frozen=True)
class SdpaCase:
    name: str
    window: int | None
    causal: bool
    splits: dict
    documents: tuple | None = None

    def global_case(self):
        return Case(1 if self.documents else B, sum(self.splits[2]), HQ, HKV, 16, self.window, None, self.causal)


CASES = _cases()
SDPA_CASES = [
    SdpaCase("sdpa-full-causal", None, True, UNEVEN),
    SdpaCase("sdpa-window", 5, True, SKEWED),
    SdpaCase("sdpa-bidirectional", None, False, EVEN),
    SdpaCase("sdpa-packed-window", 4, True, EVEN, DOCS_24),
]
SUBGROUP = (1, 3)  # in the 4-process run, these two ranks also run as a group of their own
SUBGROUP_CASES = ("causal-long", "centred-long", "packed-causal")


# ---- worker side (runs in the spawned processes) ----------------------------------------


def _chunk(t, lo, hi, packed):
    return t[lo:hi] if packed else t[:, lo:hi]


def _local_inputs(case, offsets, r):
    packed = case.documents is not None
    full = make_inputs(case.global_case(), torch.float32, seed=7)
    dout = make_dout(case.global_case(), torch.float32, seed=8)
    if packed:
        full, dout = [t[0] for t in full], dout[0]
    lo, hi = offsets[r], offsets[r + 1]
    if case.strided:  # leaves laid out [B, H, N, D]; the op sees [B, N, H, D] views
        leaves = [t[:, lo:hi].transpose(1, 2).contiguous().requires_grad_() for t in full]
        return leaves, [t.transpose(1, 2) for t in leaves], dout[:, lo:hi]
    leaves = [_chunk(t, lo, hi, packed).clone().requires_grad_() for t in full]
    return leaves, leaves, _chunk(dout, lo, hi, packed)


def _run_case(case, sizes, group, rank):
    offsets = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    leaves, inputs, dout = _local_inputs(case, offsets, rank)
    if case.mesh:
        group = init_device_mesh("cpu", (len(sizes),)) if group is None else group
    options = dict(causal=case.causal, logits=case.logits, group=group, backend=case.backend)
    if case.documents:
        options["cu_seqlens"] = torch.tensor(case.documents, dtype=torch.int32)
    comm_stats().reset()
    out = two_simplicial_attention_cp(*inputs, w1=case.w1, w2=case.w2, **options)
    out.backward(dout)
    grads = [t.grad.transpose(1, 2) if case.strided else t.grad for t in leaves]
    return {"out": out.detach(), "grads": grads, "stats": dataclasses.asdict(comm_stats())}


def _run_sdpa_case(case, sizes, rank):
    offsets = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    packed = case.documents is not None
    q, k, v = make_inputs(case.global_case(), torch.float32, seed=5)[:3]
    dout = make_dout(case.global_case(), torch.float32, seed=6)
    if packed:
        q, k, v, dout = q[0], k[0], v[0], dout[0]
    lo, hi = offsets[rank], offsets[rank + 1]
    leaves = [_chunk(t, lo, hi, packed).clone().requires_grad_() for t in (q, k, v)]
    cu = None if not packed else torch.tensor(case.documents, dtype=torch.int32)
    comm_stats().reset()
    out = dot_product_attention_cp(*leaves, window=case.window, causal=case.causal, cu_seqlens=cu)
    out.backward(_chunk(dout, lo, hi, packed))
    return {"out": out.detach(), "grads": [t.grad for t in leaves], "stats": dataclasses.asdict(comm_stats())}


DT_CASE = Case(2, 9, 4, 2, 16, 4, 3)


def _dtensor_records(world):
    """The ops on DTensor inputs: each placement's output and gradients (full tensors), and the errors."""
    records = {}
    q, k1, k2, v1, v2 = make_inputs(DT_CASE, seed=11)
    dout = make_dout(DT_CASE, seed=12)
    mesh = init_device_mesh("cpu", (world,)) if world == 2 else init_device_mesh("cpu", (2, 2))
    layouts = {"heads": [Shard(2)], "batch": [Shard(0)], "replicated": [Replicate()]}
    if world == 4:
        layouts = {"batch-x-heads": [Shard(0), Shard(2)]}
    for name, placements in layouts.items():
        leaves = [distribute_tensor(t, mesh, placements).requires_grad_() for t in (q, k1, k2, v1, v2)]
        out, lse = sa.two_simplicial_attention(*leaves, w1=DT_CASE.w1, w2=DT_CASE.w2, return_lse=True,
                                               backend="reference")  # fmt: skip
        out.backward(distribute_tensor(dout, mesh, placements))
        records[name] = {
            "placements": out.placements,
            "out": out.full_tensor().detach(),
            "lse": lse.full_tensor(),
            "grads": [t.grad.full_tensor() for t in leaves],
        }
    if world == 2:
        cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
        packed = [distribute_tensor(t[0], mesh, [Shard(1)]) for t in (q, k1, k2, v1, v2)]
        out = sa.two_simplicial_attention_varlen(*packed, DTensor.from_local(cu, mesh, [Replicate()]), None, 4, 3,
                                                 backend="reference")  # fmt: skip
        records["packed-heads"] = {"placements": out.placements, "out": out.full_tensor()}
        errors = {}
        for name, placement, hkv in (("sequence", Shard(1), 2), ("head_dim", Shard(3), 2), ("kv-heads", Shard(2), 1)):
            try:
                tensors = [distribute_tensor(t[:, :, :hkv] if i else t, mesh, [placement]) for i, t in
                           enumerate((q, k1, k2, v1, v2))]  # fmt: skip
                sa.two_simplicial_attention(*tensors, w1=4, w2=3, backend="reference")
                errors[name] = None
            except Exception as exc:  # DTensor wraps the rule's ValueError in a RuntimeError
                errors[name] = (type(exc.__cause__).__name__, str(exc.__cause__))
        records["errors"] = errors
    return records


def _worker(rank, world, init_file, out_dir):
    init_group(rank, world, init_file)
    # Poison: every torch.empty (receive buffers, extended sequences) starts as NaN, so a row
    # the exchange forgets to fill fails the comparison.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        records = {}
        for case in CASES:
            records[("world", case.name)] = _run_case(case, case.splits[world], None, rank)
        for case in SDPA_CASES:
            records[("sdpa", case.name)] = _run_sdpa_case(case, case.splits[world], rank)
        if world == 4:
            sub = dist.new_group(list(SUBGROUP))
            if rank in SUBGROUP:
                for case in CASES:
                    if case.name in SUBGROUP_CASES:
                        sizes = case.splits[2]
                        records[("subgroup", case.name)] = _run_case(case, sizes, sub, SUBGROUP.index(rank))
        if world in (2, 4):
            records["dtensor"] = _dtensor_records(world)
        q, k1, k2, v1, v2 = make_inputs(Case(1, 4, 2, 1, 16, 3, 3), seed=rank)
        try:  # rank 1 disagrees about w1: every rank must get the error, none may hang
            two_simplicial_attention_cp(q, k1, k2, v1, v2, w1=4 + (rank == 1), w2=3)
            records["mismatch"] = None
        except ValueError as e:
            records["mismatch"] = str(e)
        save(out_dir, rank, records)
    finally:
        dist.destroy_process_group()


# ---- parent side ---------------------------------------------------------------------------


_REFERENCE = {}


def _single_process(case):
    """Output and the five gradients of the single-process op on the whole sequence."""
    if case.name not in _REFERENCE:
        inputs = make_inputs(case.global_case(), torch.float32, seed=7, requires_grad=True)
        dout = make_dout(case.global_case(), torch.float32, seed=8)
        options = dict(w1=case.w1, w2=case.w2, causal=case.causal, logits=case.logits, backend=case.backend)
        if case.documents:
            cu = torch.tensor(case.documents, dtype=torch.int32)
            out = sa.two_simplicial_attention_varlen(*(t[0] for t in inputs), cu, **options)
            out.backward(dout[0])
            _REFERENCE[case.name] = (out.detach(), [t.grad[0] for t in inputs])
        else:
            out = sa.two_simplicial_attention(*inputs, **options)
            out.backward(dout)
            _REFERENCE[case.name] = (out.detach(), [t.grad for t in inputs])
    return _REFERENCE[case.name]


def _runs(world, records):
    """(label, case, sizes, per-member records in group order) for every run of the spawn."""
    for case in CASES:
        yield "world", case, case.splits[world], [records[r][("world", case.name)] for r in range(world)]
        if world == 4 and case.name in SUBGROUP_CASES:
            yield "subgroup", case, case.splits[2], [records[r][("subgroup", case.name)] for r in SUBGROUP]


def _concat(pieces, packed):
    return torch.cat(pieces, dim=0 if packed else 1)


def _check_matches_single_process(world, records):
    bound = BOUNDS[torch.float32]
    for label, case, sizes, members in _runs(world, records):
        ref_out, ref_grads = _single_process(case)
        packed = case.documents is not None
        out = _concat([m["out"] for m in members], packed)
        assert out.shape == ref_out.shape
        errors = {"out": rel_err(out, ref_out)}
        for i, name in enumerate(("dq", "dk1", "dk2", "dv1", "dv2")):
            errors[name] = rel_err(_concat([m["grads"][i] for m in members], packed), ref_grads[i])
        bad = {k: v for k, v in errors.items() if not v <= bound}
        assert not bad, f"{label} {case.name} chunks {sizes}: rel err above {bound}: {bad}"


def _sdpa_reference(case):
    q, k, v = (t.requires_grad_() for t in make_inputs(case.global_case(), torch.float32, seed=5)[:3])
    dout = make_dout(case.global_case(), torch.float32, seed=6)
    n = q.shape[1]
    i = torch.arange(n)
    visible = torch.ones(n, n, dtype=torch.bool)
    if case.causal:
        visible = (i[:, None] >= i[None, :]) & (True if case.window is None else i[:, None] - i[None, :] < case.window)
    if case.documents:
        doc = torch.searchsorted(torch.tensor(case.documents), i, right=True)
        visible = visible & (doc[:, None] == doc[None, :])
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=visible, enable_gqa=True
    ).transpose(1, 2)
    out.backward(dout)
    strip = (lambda t: t[0]) if case.documents else (lambda t: t)
    return strip(out.detach()), [strip(t.grad) for t in (q, k, v)]


def _check_standard_attention_matches_single_process(world, records):
    """The SDPA layers' context parallelism: full causal, trailing window, bidirectional, packed."""
    for case in SDPA_CASES:
        members = [records[r][("sdpa", case.name)] for r in range(world)]
        ref_out, ref_grads = _sdpa_reference(case)
        packed = case.documents is not None
        errors = {"out": rel_err(_concat([m["out"] for m in members], packed), ref_out)}
        for i, name in enumerate(("dq", "dk", "dv")):
            errors[name] = rel_err(_concat([m["grads"][i] for m in members], packed), ref_grads[i])
        bad = {k: v for k, v in errors.items() if not v <= BOUNDS[torch.float32]}
        assert not bad, f"{case.name} chunks {case.splits[world]}: {bad}"


def _halo_rows(sizes, w, causal, documents=None):
    """Per rank: (rows it must receive, rows it must send), by brute force over the window table."""
    offsets = [sum(sizes[:r]) for r in range(len(sizes) + 1)]
    n = offsets[-1]
    doc = [0] * n if documents is None else [sum(c <= p for c in documents[1:]) for p in range(n)]

    def in_window(i, j):
        if doc[i] != doc[j]:
            return False
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


def _check_traffic(got, where, expected_recv, expected_send):
    assert got["halo_sent"] == expected_send, where
    assert got["halo_received"] == expected_recv, where
    assert got["grad_sent"] == expected_recv, where
    assert got["grad_received"] == expected_send, where
    assert got["layout_gathers"] == 1, where


def _check_traffic_is_the_halo(world, records):
    """Each rank sends exactly the k/v rows its peers' windows reach (and their gradients back); a document
    boundary cuts the halo."""
    for label, case, sizes, members in _runs(world, records):
        row_bytes = case.global_case().B * HKV * case.D * 4  # one position of one fp32 tensor
        recv1, send1 = _halo_rows(sizes, case.w1, case.causal, case.documents)  # k1 and v1
        recv2, send2 = _halo_rows(sizes, case.w2, case.causal, case.documents)  # k2 and v2
        for r, m in enumerate(members):
            expected_recv = 2 * row_bytes * (recv1[r] + recv2[r])
            expected_send = 2 * row_bytes * (send1[r] + send2[r])
            _check_traffic(m["stats"], f"{label} {case.name} chunks {sizes} rank {r}", expected_recv, expected_send)
    for case in SDPA_CASES:
        sizes = case.splits[world]
        row_bytes = case.global_case().B * HKV * 16 * 4
        recv, send = _halo_rows(sizes, case.window, case.causal, case.documents)  # k and v
        for r in range(world):
            got = records[r][("sdpa", case.name)]["stats"]
            _check_traffic(got, f"{case.name} rank {r}", 2 * row_bytes * recv[r], 2 * row_bytes * send[r])


def test_packed_halo_stops_at_documents():
    """The brute force itself: with packing DOCS_24 on 4 ranks of 6, rank 2 starts a document (position
    12) and receives nothing from before it, though its causal window reaches back 5."""
    recv, _ = _halo_rows([6, 6, 6, 6], 6, True, DOCS_24)
    plain, _ = _halo_rows([6, 6, 6, 6], 6, True)
    assert recv[2] == 0 and plain[2] == 5 and recv[1] == 1  # rank 1's document starts at 5


def _check_mismatched_settings_raise_on_every_rank(world, records):
    for r in range(world):
        message = records[r]["mismatch"]
        assert message is not None, f"rank {r} did not raise"
        assert "same w1" in message and "rank 1: 5" in message and "rank 0: 4" in message, message


def _dtensor_reference():
    inputs = make_inputs(DT_CASE, seed=11, requires_grad=True)
    out, lse = sa.two_simplicial_attention(*inputs, w1=DT_CASE.w1, w2=DT_CASE.w2, return_lse=True, backend="reference")
    out.backward(make_dout(DT_CASE, seed=12))
    return out.detach(), lse, [t.grad for t in inputs]


def _check_ops_on_dtensors(world, records):
    """Heads (Shard(2)), batch (Shard(0)), replicated, batch x heads on a 2-D mesh, and a packed call with
    its heads sharded: outputs, lse and gradients equal one process, in the placement of the inputs."""
    ref_out, ref_lse, ref_grads = _dtensor_reference()
    expect = {"heads": (Shard(2),), "batch": (Shard(0),), "replicated": (Replicate(),),
              "batch-x-heads": (Shard(0), Shard(2))}  # fmt: skip
    for r in range(world):
        for name, got in records[r]["dtensor"].items():
            if name in ("errors", "packed-heads"):
                continue
            assert got["placements"] == expect[name], name
            assert rel_err(got["out"], ref_out) <= BOUNDS[torch.float32], name
            assert rel_err(got["lse"], ref_lse) <= BOUNDS[torch.float32], name
            for g, ref in zip(got["grads"], ref_grads, strict=True):
                assert rel_err(g, ref) <= BOUNDS[torch.float32], name
    if world == 2:
        q, k1, k2, v1, v2 = make_inputs(DT_CASE, seed=11)
        cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
        ref = sa.two_simplicial_attention_varlen(q[0], k1[0], k2[0], v1[0], v2[0], cu, None, 4, 3, backend="reference")
        got = records[0]["dtensor"]["packed-heads"]
        assert got["placements"] == (Shard(1),) and rel_err(got["out"], ref) <= BOUNDS[torch.float32]


def _check_refused_dtensor_placements_name_the_way_out(world, records):
    errors = records[0]["dtensor"]["errors"]
    assert errors["sequence"][0] == "ValueError" and "two_simplicial_attention_cp" in errors["sequence"][1]
    assert errors["head_dim"][0] == "ValueError" and "Shard(2)" in errors["head_dim"][1]
    assert errors["kv-heads"][0] == "ValueError" and "kv heads (1) to be multiples of 2" in errors["kv-heads"][1]


@pytest.mark.parametrize("world", [2, 3, 4], ids=lambda w: f"world{w}")
def test_launch(world, tmp_path):
    """One launch of `world` processes (one test, so a parallel test run never starts it twice), then every
    check of its records."""
    records = launch(_worker, world, tmp_path)
    _check_matches_single_process(world, records)
    _check_standard_attention_matches_single_process(world, records)
    _check_traffic_is_the_halo(world, records)
    _check_mismatched_settings_raise_on_every_rank(world, records)
    if world in (2, 4):
        _check_ops_on_dtensors(world, records)
    if world == 2:
        _check_refused_dtensor_placements_name_the_way_out(world, records)


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
    with pytest.raises(ValueError, match="determinant"):
        two_simplicial_attention_cp(q, k1, k2, v1, v2, logits="determinant")  # head_dim 16 % 3 != 0
    with pytest.raises(ValueError, match="rank 3"):  # packed calls take [T, H, D]
        two_simplicial_attention_cp(q, k1, k2, v1, v2, cu_seqlens=torch.tensor([0, 4]))


def test_single_rank_group_is_the_local_op(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        inputs = make_inputs(Case(2, 9, 4, 2, 16, 4, 3), seed=3)
        out = two_simplicial_attention_cp(*inputs, w1=4, w2=3, backend="reference")
        ref = sa.two_simplicial_attention(*inputs, w1=4, w2=3, backend="reference")
        assert torch.equal(out, ref)
        cu = torch.tensor([0, 4, 9], dtype=torch.int32)
        out = two_simplicial_attention_cp(*(t[0] for t in inputs), w1=4, w2=3, cu_seqlens=cu, backend="reference")
        assert torch.equal(out, sa.two_simplicial_attention_varlen(*(t[0] for t in inputs), cu, w1=4, w2=3,
                                                                   backend="reference"))  # fmt: skip
    finally:
        dist.destroy_process_group()
