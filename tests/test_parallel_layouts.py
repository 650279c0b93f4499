"""Whole models on one device mesh (simplicial_attn.parallel.parallelize) against one process.

Three launches of gloo processes (tests/dist_launch.py), one test each (so a parallel test run
never starts a launch twice): 2 processes run dp2, cp2 and tp2, 4 run dp2 x cp2 and tp2 x cp2, 8
run dp2 x cp2 x tp2. Each layout trains one step of two models, the
examples' `Decoder` (batched rows; and packed documents, a boundary inside a rank's chunk and one
across ranks) and the HF `SimplicialForCausalLM` (determinant logits): every rank feeds its rows
(dp) and its chunk of the sequence (cp), its loss is the mean cross-entropy over its own tokens,
and FSDP2 averages the gradients over dp x cp. The parent compares the reassembled logits (1e-5
relative), the mean loss and every parameter's full gradient (1e-4) with one process on the
whole batch. Also checked:

- a DCP checkpoint written after an SGD step under one layout loads under another (dp2 x cp2 ->
  tp2 x cp2; dp2 x cp2 x tp2 -> dp4 x cp2) and in one process, with the stepped model's logits;
- FSDP2 with bf16 parameters and fp32 gradient reduction (dp2): bf16 compute, fp32 gradients,
  the loss within bf16 error of fp32;
- the HF model from `from_pretrained(..., tp_plan="auto")` (tp2): logits, loss, gradients and
  greedy generation equal one process, and `save_pretrained` writes the unsharded checkpoint.

Runtime on the 2-core CI machine: see the durations report (~2 min, the 8-process launch the
largest part: 8 processes share 2 cores).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from simplicial_attn import backends
from simplicial_attn.parallel import context_parallel, parallelize
from simplicial_attn.parallel.tensor import attention_plan, mlp_plan

from cases import BOUNDS, rel_err
from dist_launch import init_group, launch, save

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
from model import Decoder  # noqa: E402

HAS_HF = importlib.util.find_spec("transformers") is not None
if HAS_HF:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    import simplicial_attn.hf  # noqa: F401

BACKEND = "reference" if backends.get("cpu").not_supported_reasons("cpu", torch.float32) else "cpu"
VOCAB, ROWS, N = 32, 4, 16
DOCS = (0, 5, 12, 12, 19, 24)  # packed streams of 24 tokens: chunks of 12, 6 or 24 split them mid-document
OUT_BOUND, GRAD_BOUND = BOUNDS[torch.float32], 1e-4
BF16_GRAD_BOUND = 0.1  # bf16 weights and activations: a few per cent, not noise
LAYOUTS = {  # (dp, cp, tp) per launch
    2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)],
    4: [(2, 2, 1), (1, 2, 2)],
    8: [(2, 2, 2)],
}
CHECKPOINT = {4: ((2, 2, 1), (1, 2, 2)), 8: ((2, 2, 2), (4, 2, 1))}  # saved under, loaded under
MODELS = ["decoder", "decoder-packed"] + (["hf"] if HAS_HF else [])


def build(model):
    torch.manual_seed(0)
    if model == "hf":
        config = AutoConfig.for_model(
            "simplicial", vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, simplicial_every=2, w1=5, w2=3,
            simplicial_logits="determinant", simplicial_backend=BACKEND,
        )  # fmt: skip
        return AutoModelForCausalLM.from_config(config).float()
    return Decoder(VOCAB, dim=32, depth=2, num_heads=4, num_kv_heads=2, simplicial_every=2, w1=5, w2=3, backend=BACKEND)


def streams(model, dp):
    """The data: one [ROWS, N + 1] batch split into dp row blocks, or one packed stream of 25 tokens per dp rank
    (the packed reference of a layout runs its dp streams)."""
    g = torch.Generator().manual_seed(1)
    if model == "decoder-packed":
        return [torch.randint(0, VOCAB, (DOCS[-1] + 1,), generator=g) for _ in range(dp)]
    return list(torch.randint(0, VOCAB, (ROWS, N + 1), generator=g).chunk(dp))


def logits_of(model, net, tokens):
    if model == "hf":
        return net(input_ids=tokens).logits
    if model == "decoder-packed":
        return net(tokens, cu_seqlens=torch.tensor(DOCS, dtype=torch.int32))
    return net(tokens)


def cross_entropy(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def reference(model, dp=1, lr=None):
    """One process on the whole batch (packed: on the dp streams): logits per stream, mean loss,
    gradients; with lr, the model after one SGD step."""
    net = build(model)
    data = streams(model, dp if model == "decoder-packed" else 1)
    outs = [logits_of(model, net, s[..., :-1]) for s in data]
    loss = sum(cross_entropy(o, s[..., 1:]) for o, s in zip(outs, data, strict=True)) / len(data)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    if lr is not None:
        torch.optim.SGD(net.parameters(), lr=lr).step()
    return net, [o.detach() for o in outs], loss.item(), grads


# ---- worker side ----------------------------------------------------------------------------------


def _mesh(dp, cp, tp):
    return init_device_mesh("cpu", (dp, cp, tp), mesh_dim_names=("dp", "cp", "tp"))


def _local_tokens(model, mesh, layout):
    """This rank's inputs and labels: its dp stream (or rows), then its cp chunk of the sequence; and where
    that piece sits (stream or row block, first position)."""
    dp, cp, _ = layout
    block = mesh["dp"].get_local_rank()
    stream = streams(model, dp)[block]
    x, y = stream[..., :-1], stream[..., 1:]
    n = x.shape[-1] // cp
    lo = mesh["cp"].get_local_rank() * n
    return x[..., lo : lo + n], y[..., lo : lo + n], (block, lo)


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _step(model, layout, mp_policy=None):
    mesh = _mesh(*layout)
    net = parallelize(build(model), mesh, mp_policy=mp_policy)
    x, y, where = _local_tokens(model, mesh, layout)
    logits = logits_of(model, net, x)
    loss = cross_entropy(logits.float(), y)
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)  # tp ranks hold equal losses: the mean over every rank is the mean over dp x cp
    grads = {n: _full(p.grad) for n, p in net.named_parameters()}  # collective: every rank gathers
    record = {"logits": logits.detach(), "where": where, "loss": mean.item() / dist.get_world_size()}
    if dist.get_rank() == 0:
        record["grads"] = grads
        record["dtypes"] = (logits.dtype, {p.grad.dtype for p in net.parameters()},
                            {p.dtype for p in net.parameters()})  # fmt: skip
    return net, record


def _checkpoint_round_trip(world, ckpt):
    """One SGD step under the first layout, saved with DCP; loaded under the second: its logits."""
    saved_under, loaded_under = CHECKPOINT[world]
    net, _ = _step("decoder", saved_under)
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    dcp.save(get_model_state_dict(net), checkpoint_id=ckpt)
    mesh = _mesh(*loaded_under)
    net = parallelize(build("decoder"), mesh)
    state = get_model_state_dict(net)
    dcp.load(state, checkpoint_id=ckpt)
    set_model_state_dict(net, state)
    x, _, where = _local_tokens("decoder", mesh, loaded_under)
    with torch.no_grad():
        return {"logits": logits_of("decoder", net, x), "where": where}


def _hf_tp(hf_dir):
    net = AutoModelForCausalLM.from_pretrained(hf_dir, tp_plan="auto", dtype=torch.float32)
    tokens = streams("hf", 1)[0]
    out = net(input_ids=tokens[:, :-1])
    loss = cross_entropy(out.logits, tokens[:, 1:])
    loss.backward()
    record = {"logits": out.logits.detach(), "loss": loss.item()}
    record["grads"] = {n: _full(p.grad) for n, p in net.named_parameters()}
    record["sharded"] = type(net.model.layers[1].self_attn.k1_proj.weight).__name__
    with torch.no_grad():
        record["generated"] = net.generate(tokens[:, :4], max_new_tokens=6, do_sample=False)
    net.save_pretrained(pathlib.Path(hf_dir) / "resaved")
    return record


def _worker(rank, world, init_file, out_dir, hf_dir):
    init_group(rank, world, init_file)
    try:
        records = {}
        for layout in LAYOUTS[world]:
            for model in MODELS:
                records[(model, layout)] = _step(model, layout)[1]
        if world in CHECKPOINT:
            records["loaded"] = _checkpoint_round_trip(world, str(pathlib.Path(out_dir) / "dcp"))
        if world == 2:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            records["bf16"] = _step("decoder", (2, 1, 1), mp_policy=mp)[1]
            if HAS_HF:
                records["hf-tp-auto"] = _hf_tp(hf_dir)
        save(out_dir, rank, records)
    finally:
        dist.destroy_process_group()


# ---- parent side ----------------------------------------------------------------------------------


_REFERENCES = {}


def _reference(model, dp):
    key = (model, dp if model == "decoder-packed" else 1)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(model, dp)[1:]
    return _REFERENCES[key]


def _assemble(model, layout, records):
    """The full logits per stream, put together from every rank's piece (tp ranks hold the same piece)."""
    dp = layout[0]
    ref_logits = _reference(model, dp)[0]
    out = [torch.full_like(t, float("nan")) for t in ref_logits]
    rows = ROWS // dp
    for r in records.values():
        (block, lo), piece = r["where"], r["logits"]
        if model == "decoder-packed":
            out[block][lo : lo + piece.shape[0]] = piece
        else:
            out[0][block * rows : (block + 1) * rows, lo : lo + piece.shape[1]] = piece
    return torch.cat([t.reshape(-1, VOCAB) for t in out])


def _check_layouts(world, records):
    """Logits, loss and every parameter's gradient of every layout equal one process."""
    for layout in LAYOUTS[world]:
        for model in MODELS:
            ref_logits, ref_loss, ref_grads = _reference(model, layout[0])
            got = {r: records[r][(model, layout)] for r in range(world)}
            where = f"{model} (dp, cp, tp) = {layout}"
            logits = _assemble(model, layout, got)
            assert rel_err(logits, torch.cat([t.reshape(-1, VOCAB) for t in ref_logits])) <= OUT_BOUND, where
            assert abs(got[0]["loss"] - ref_loss) <= OUT_BOUND * abs(ref_loss), where
            grads = got[0]["grads"]
            assert grads.keys() == ref_grads.keys(), where
            bad = {n: rel_err(grads[n], g) for n, g in ref_grads.items() if not rel_err(grads[n], g) <= GRAD_BOUND}
            assert not bad, f"{where}: gradients off: {bad}"


def _check_checkpoint(world, records, out_dir):
    """The checkpoint saved under one layout holds the one-process SGD step (to the gradients' 1e-4), loads
    in one process, and under the other layout gives the stepped model's logits."""
    stepped = reference("decoder", lr=0.5)[0]
    single = build("decoder")
    state = single.state_dict()
    dcp.load(state, checkpoint_id=str(out_dir / "dcp"), no_dist=True)
    single.load_state_dict(state)
    for name, p in single.named_parameters():
        assert rel_err(p, dict(stepped.named_parameters())[name]) <= OUT_BOUND, name
    with torch.no_grad():
        expect = single(streams("decoder", 1)[0][:, :-1])
    loaded_under = CHECKPOINT[world][1]
    got = _assemble("decoder", loaded_under, {r: records[r]["loaded"] for r in range(world)})
    assert rel_err(got, expect.reshape(-1, VOCAB)) <= OUT_BOUND, f"loaded under {loaded_under}"


def _check_bf16(records):
    """FSDP2's MixedPrecisionPolicy(bf16 params, fp32 reduce): the forward runs in bf16, the gradients
    arrive in fp32 on fp32 parameters, and the loss and gradients are within bf16 error of fp32."""
    got = records[0]["bf16"]
    logits_dtype, grad_dtypes, param_dtypes = got["dtypes"]
    assert logits_dtype == torch.bfloat16 and grad_dtypes == {torch.float32} and param_dtypes == {torch.float32}
    _, ref_loss, ref_grads = _reference("decoder", 2)
    assert abs(got["loss"] - ref_loss) <= BOUNDS[torch.bfloat16] * abs(ref_loss)
    errors = {n: rel_err(got["grads"][n], g) for n, g in ref_grads.items()}
    assert max(errors.values()) <= BF16_GRAD_BOUND, errors


def _check_hf_tp_plan_auto(world, records, hf_dir):
    """`from_pretrained(..., tp_plan="auto")`: sharded projections; logits, loss, gradients and greedy
    generation of one process; `save_pretrained` writes the unsharded checkpoint."""
    net = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokens = streams("hf", 1)[0]
    out = net(input_ids=tokens[:, :-1])
    loss = cross_entropy(out.logits, tokens[:, 1:])
    loss.backward()
    with torch.no_grad():
        generated = net.generate(tokens[:, :4], max_new_tokens=6, do_sample=False)
    for r in range(world):
        got = records[r]["hf-tp-auto"]
        assert got["sharded"] == "DTensor"
        assert rel_err(got["logits"], out.logits) <= OUT_BOUND
        assert abs(got["loss"] - loss.item()) <= OUT_BOUND * abs(loss.item())
        for name, p in net.named_parameters():
            assert rel_err(got["grads"][name], p.grad) <= GRAD_BOUND, name
        assert torch.equal(got["generated"], generated)
    saved = load_file(hf_dir / "model.safetensors")
    resaved = load_file(hf_dir / "resaved" / "model.safetensors")
    assert saved.keys() == resaved.keys() and all(torch.equal(saved[k], resaved[k]) for k in saved)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # the one-process DCP load
@pytest.mark.parametrize("world", [2, 4, 8], ids=lambda w: f"world{w}")
def test_layouts(world, tmp_path):
    hf_dir = tmp_path / "hf"
    if HAS_HF and world == 2:
        build("hf").save_pretrained(hf_dir)
    preload = ["simplicial_attn.hf"] if HAS_HF else []
    records = launch(_worker, world, tmp_path, args=(str(hf_dir),), timeout_s=600, preload=preload)
    _check_layouts(world, records)
    if world in CHECKPOINT:
        _check_checkpoint(world, records, tmp_path)
    if world == 2:
        _check_bf16(records)
        if HAS_HF:
            _check_hf_tp_plan_auto(world, records, hf_dir)


# ---- one process: the plans' and layers' refusals, and a group of one ---------------------------------


@pytest.fixture
def group_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1, 1, 1), mesh_dim_names=("dp", "cp", "tp"))
    dist.destroy_process_group()


def test_a_group_of_one_changes_nothing(group_of_one):
    """Under context parallelism over one rank, the layers equal the plain ones: batched, packed (positions
    restart at each document) and unbatched."""
    plain, split = build("decoder"), build("decoder")
    parallelize(split, group_of_one)  # sizes 1: nothing applied
    assert all(type(p) is torch.nn.Parameter for p in split.parameters())
    context_parallel(split, group_of_one["cp"])
    x = streams("decoder", 1)[0][:, :-1]
    torch.testing.assert_close(split(x), plain(x), rtol=1e-6, atol=1e-6)
    packed = streams("decoder-packed", 1)[0][:-1]
    cu = torch.tensor(DOCS, dtype=torch.int32)
    torch.testing.assert_close(split(packed, cu_seqlens=cu), plain(packed, cu_seqlens=cu), rtol=1e-6, atol=1e-6)
    h = torch.randn(N, 32)
    torch.testing.assert_close(split.blocks[1](h), plain.blocks[1](h), rtol=1e-6, atol=1e-6)


def test_context_parallel_refusals(group_of_one):
    net = context_parallel(build("decoder"), group_of_one["cp"])
    with pytest.raises(ValueError, match="generation cache"):
        net.blocks[1].attn(torch.randn(1, 3, 32), cache=net.blocks[1].new_cache(1, max_length=8))
    with pytest.raises(ValueError, match="holds no TwoSimplicialAttention"):
        context_parallel(torch.nn.Linear(2, 2), group_of_one["cp"])
    with pytest.raises(ValueError, match="1-D"):
        context_parallel(build("decoder"), group_of_one)
    if HAS_HF:
        hf = context_parallel(build("hf"), group_of_one["cp"])
        ids = torch.ones(2, 5, dtype=torch.long)
        with pytest.raises(ValueError, match="unpadded rows"):
            hf(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]))
        hf(input_ids=ids)  # no padding: runs


def test_plans_refuse_what_they_cannot_split(group_of_one):
    with pytest.raises(ValueError, match=r"kv heads \(2\) must be multiples of 4"):
        attention_plan(build("decoder").blocks[1].attn, 4)
    with pytest.raises(ValueError, match="not a feed-forward layer"):
        mlp_plan(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    bad = init_device_mesh("cpu", (1, 1), mesh_dim_names=("tp", "dp"))
    with pytest.raises(ValueError, match="in that order"):
        parallelize(build("decoder"), bad)
    with pytest.raises(ValueError, match="no ModuleList of decoder blocks"):
        parallelize(torch.nn.Linear(2, 2), group_of_one)


def test_chunk_positions_restart_at_documents():
    """A rank's RoPE positions: global ones, restarting at every document of a packed stream (the
    package's rotaries are shift invariant, so a wrong offset would not show in the outputs)."""
    from simplicial_attn.parallel import ChunkLayout

    assert ChunkLayout((0, 12, 24), 1, None).positions().tolist() == list(range(12, 24))
    packed = ChunkLayout((0, 10, 24), 1, None, DOCS).positions().tolist()  # DOCS: 0, 5, 12, 12, 19, 24
    assert packed == [5, 6, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]


@pytest.mark.skipif(not HAS_HF, reason="needs transformers (pip install 'simplicial-attn[hf]')")
def test_train_mesh_smoke(tmp_path):
    """examples/train_mesh.py under torchrun (2 gloo processes, context parallelism 2): trains, validates,
    and saves checkpoints that load (the unsharded one with from_pretrained)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(root / "examples" / "train_mesh.py"),
        "--cp",
        "2",
        "--tiny",
        "--steps",
        "2",
        "--save",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # an abort prints its Python stacks
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "mesh dp=1 cp=2 tp=1" in run.stdout and "validation loss" in run.stdout
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.config.layer_kinds == "AS" and (tmp_path / "dcp" / ".metadata").is_file()
