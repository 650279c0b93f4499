"""The torchtitan spec (simplicial_attn.parallel.titan) with torchtitan 0.2.2, on the CPU with gloo.

torchtitan's trainer needs an accelerator (it picks "cuda" when it finds none and stops at
torch.cuda.set_device: test_without_an_accelerator_torchtitan_picks_cuda_and_fails shows it), so:

- the spec registers, its config file parses, every flavor builds on the meta device;
- the spec's parallelize function and one training step as torchtitan's trainer takes it (its
  ParallelDims and meshes, its context-parallel input sharding, its summed cross-entropy over the
  global token count, FSDP's gradient division off, its gradient clipping) on dp2 x cp2 x tp2 (8
  gloo processes) equal one process: loss, every gradient, the clipped gradient norm;
- torchtitan's own Trainer, its device pointed at the CPU (tests/titan_cpu.py), trains the config
  file for 3 steps under torchrun with context parallelism 2.

Skipped, with the reason, when torchtitan is not installed (requirements-dev.txt installs it).
"""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchtitan", reason="needs torchtitan 0.2.2 (pip install 'simplicial-attn[titan]')")

import titan_cpu  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torchtitan.components.loss import build_cross_entropy_loss  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.distributed import ParallelDims  # noqa: E402
from torchtitan.distributed import utils as dist_utils  # noqa: E402
from torchtitan.distributed.context_parallel import prepare_context_parallel_input  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402

import simplicial_attn.parallel.titan as titan  # noqa: E402
from simplicial_attn import backends  # noqa: E402

from cases import rel_err  # noqa: E402
from dist_launch import init_group, launch, save  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "python" / "simplicial_attn" / "parallel" / "titan" / "simplicial_debug.toml"
BACKEND = "reference" if backends.get("cpu").not_supported_reasons("cpu", torch.float32) else "cpu"
TINY = titan.TitanArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, simplicial_every=2, w1=5, w2=3, backend=BACKEND)
SEQ, BATCH = 16, 2  # per dp rank


def test_spec_registers_and_the_config_parses():
    spec = get_train_spec(titan.NAME)
    assert spec.model_cls is titan.TitanModel and spec.parallelize_fn is titan.parallelize_simplicial
    config = ConfigManager().parse_args(["--job.config_file", str(CONFIG)])
    assert (config.model.name, config.model.flavor) == ("simplicial", "debugmodel")
    assert config.experimental.custom_import == "simplicial_attn.parallel.titan"
    for flavor, args in titan.FLAVORS.items():
        with torch.device("meta"):
            model = titan.TitanModel(args)
        kinds = ["S" if type(b.attention).__name__ == "TwoSimplicialAttention" else "A" for b in model.layers.values()]
        assert "".join(kinds) == ("AAAS" * args.n_layers)[: args.n_layers], flavor
        params, flops = args.get_nparams_and_flops(model, 256)
        assert params == sum(p.numel() for p in model.parameters()) and flops > 6 * (params - args.dim * 256)


def _job(dp, cp, tp):
    return ConfigManager().parse_args(
        ["--job.config_file", str(CONFIG), "--training.seq_len", str(SEQ), "--training.local_batch_size", str(BATCH),
         "--parallelism.data_parallel_shard_degree", str(dp), "--parallelism.context_parallel_degree", str(cp),
         "--parallelism.tensor_parallel_degree", str(tp), "--training.mixed_precision_param", "float32"]
    )  # fmt: skip


def _model():
    torch.manual_seed(0)
    model = titan.TitanModel(TINY)
    model.init_weights()
    return model


def _batches(dp):
    """Each dp rank's batch, as the spec's data loader draws it."""
    loaders = [titan.build_dataloader(dp, r, titan.ByteTokenizer(), _job(dp, 1, 1)) for r in range(dp)]
    return [next(iter(loader)) for loader in loaders]


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _titan_worker(rank, world, init_file, out_dir, layout):
    init_group(rank, world, init_file)
    titan_cpu.point_at_cpu()
    try:
        dp, cp, tp = layout
        job = _job(dp, cp, tp)
        dims = ParallelDims(dp_replicate=1, dp_shard=dp, cp=cp, tp=tp, pp=1, ep=1, etp=1, world_size=world)
        model = titan.parallelize_simplicial(_model(), dims, job)
        batch_mesh = dims.get_mesh("batch")
        input_dict, labels = _batches(dp)[batch_mesh.get_local_rank()]
        tokens = dist_utils.dist_sum(torch.tensor(labels.numel()), batch_mesh)  # the trainer's global_valid_tokens
        inputs, labels, extra = prepare_context_parallel_input(
            input_dict["input"], labels, {}, dims.get_mesh("cp"), torch.device("cpu"),
            job.parallelism.context_parallel_load_balancer,
        )  # fmt: skip
        loss = build_cross_entropy_loss(job)(model(inputs, **extra), labels) / tokens
        loss.backward()
        params = list(model.parameters())
        norm = dist_utils.clip_grad_norm_(params, job.training.max_norm, foreach=True)
        total = loss.detach().clone()
        dist.all_reduce(total)  # sum of the ranks' shares of the loss over dp x cp, counted tp times
        record = {"loss": total.item() / tp, "norm": float(_full(norm))}
        record["balancer"] = job.parallelism.context_parallel_load_balancer
        record["grads"] = {n: _full(p.grad) for n, p in model.named_parameters()}
        save(out_dir, rank, record if rank == 0 else {})
    finally:
        dist.destroy_process_group()


def test_parallelize_fn_and_a_training_step_match_one_process(tmp_path):
    layout = (2, 2, 2)
    got = launch(_titan_worker, 8, tmp_path, args=(layout,), timeout_s=600, preload=["torchtitan.train"])[0]
    model = _model()
    batches = _batches(layout[0])
    inputs = torch.cat([b[0]["input"] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    job = _job(1, 1, 1)
    loss = build_cross_entropy_loss(job)(model(inputs), labels) / labels.numel()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), job.training.max_norm)
    assert got["balancer"] is None  # contiguous chunks: the spec turned torchtitan's head-tail reordering off
    assert abs(got["loss"] - loss.item()) <= 1e-5 * loss.item()
    assert abs(got["norm"] - norm.item()) <= 1e-4 * norm.item()
    for name, p in model.named_parameters():  # clipped in place, as torchtitan's step leaves them
        assert rel_err(got["grads"][name], p.grad) <= 1e-4, name


def _torchrun(nproc, script_args, tmp_path, timeout):
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "python")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *script_args]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_trainer_runs_the_config_file_on_cpu(tmp_path):
    """torchtitan's unchanged Trainer (device pointed at the CPU) trains the spec for 3 steps with context
    parallelism 2 (and FSDP over the two ranks: torchtitan shards over dp_shard x cp)."""
    args = [str(ROOT / "tests" / "titan_cpu.py"), "--job.config_file", str(CONFIG), "--training.steps", "3",
            "--training.seq_len", "32", "--training.local_batch_size", "2", "--metrics.log_freq", "1",
            "--parallelism.data_parallel_shard_degree", "1", "--parallelism.context_parallel_degree", "2",
            "--job.dump_folder", str(tmp_path / "out")]  # fmt: skip
    run = _torchrun(2, args, tmp_path, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    losses = [float(line.split("loss:")[1].split()[0]) for line in log.splitlines() if "step:  3" in line]
    assert losses and all(0 < x < 10 for x in losses), log[-4000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows what happens without an accelerator")
def test_without_an_accelerator_torchtitan_picks_cuda_and_fails():
    """The evidence that torchtitan 0.2.2 does not run on a CPU as shipped: with no accelerator its device is
    "cuda", and the Trainer's first device call (torchtitan/train.py: device_module.set_device) raises this error."""
    from torchtitan.tools import utils

    assert utils.device_type == "cuda" and utils.device_module is torch.cuda
    with pytest.raises(RuntimeError, match="Found no NVIDIA driver on your system"):
        utils.device_module.set_device(torch.device("cuda:0"))
