"""Train the HF SimplicialForCausalLM on the standard library's text under a device mesh: FSDP2 x context x tensor.

    torchrun --nproc_per_node 4 examples/train_mesh.py --dp 2 --cp 2            # 4 processes: data x context
    torchrun --nproc_per_node 8 examples/train_mesh.py --dp 2 --cp 2 --tp 2     # all three
    python examples/train_mesh.py                                               # one process (the baseline)
    torchrun --nproc_per_node 2 examples/train_mesh.py --cp 2 --tiny --steps 3  # smoke test

The mesh (dp x cp x tp = the number of processes) goes to `simplicial_attn.parallel.parallelize`:
tensor parallelism by heads over tp, the halo-exchange context parallelism over cp, FSDP2 over dp x
cp. Each step draws `--batch` random windows of `--seq-len + 1` characters from the training files
(one byte per token, as train_code.py; the same windows whatever the mesh), every data-parallel rank
takes `--batch / dp` of them and each context-parallel rank its contiguous chunk of each: its loss
is the mean cross-entropy over its own tokens, and FSDP's average over dp x cp ranks is the global
mean (the same gradients as one process on the whole batch: tests/test_parallel_layouts.py). Runs on
GPUs with NCCL (one per process, LOCAL_RANK) or on CPUs with gloo. `--bf16`: FSDP2 mixed precision
(bf16 parameters and compute, fp32 gradient reduction). `--save DIR`: a sharded DCP checkpoint
(DIR/dcp) and the unsharded HF checkpoint (DIR/hf, `AutoModelForCausalLM.from_pretrained` loads it).
"""

import argparse
import math
import os
import pathlib
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from transformers import AutoConfig, AutoModelForCausalLM

import simplicial_attn.hf  # noqa: F401  (registers model_type "simplicial")
from simplicial_attn.parallel import parallelize

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from model import lr_at  # noqa: E402
from train_code import encode, stdlib_sources  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dp", type=int, default=1, help="data-parallel (FSDP) degree")
    p.add_argument("--cp", type=int, default=1, help="context-parallel degree (splits every sequence)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (splits the heads)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16, help="global batch (windows per step)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--w1", type=int, default=64)
    p.add_argument("--w2", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--backend", default="auto", help="the 2-simplicial op's backend")
    p.add_argument("--bf16", action="store_true", help="FSDP2 mixed precision: bf16 parameters, fp32 reduction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=pathlib.Path, default=None, help="write DIR/dcp and DIR/hf at the end")
    p.add_argument("--tiny", action="store_true", help="a tiny model on short windows (smoke test)")
    args = p.parse_args(argv)
    if args.tiny:
        args.dim, args.depth, args.heads, args.kv_heads, args.seq_len, args.batch = 32, 2, 4, 2, 32, 4
        args.w1, args.w2 = 8, 4
    return args


def setup(args):
    """(mesh, device): the process group (NCCL with a GPU per process, else gloo) and the dp x cp x tp mesh."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:  # one process without torchrun
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    world = dist.get_world_size()
    if args.dp * args.cp * args.tp != world:
        raise SystemExit(f"--dp {args.dp} x --cp {args.cp} x --tp {args.tp} must equal the {world} processes")
    if args.batch % args.dp or args.seq_len % args.cp:
        raise SystemExit("--batch must divide by --dp and --seq-len by --cp")
    mesh = init_device_mesh(device.type, (args.dp, args.cp, args.tp), mesh_dim_names=("dp", "cp", "tp"))
    return mesh, device


def build_model(args, device):
    config = AutoConfig.for_model(
        "simplicial", vocab_size=256, hidden_size=args.dim, intermediate_size=(8 * args.dim // 3 + 63) // 64 * 64,
        num_hidden_layers=args.depth, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        simplicial_every=4 if args.depth >= 4 else 2, w1=args.w1, w2=args.w2, simplicial_backend=args.backend,
        max_position_embeddings=max(4096, args.seq_len),
    )  # fmt: skip
    torch.manual_seed(args.seed)  # every rank starts from the same weights
    return AutoModelForCausalLM.from_config(config).to(device)


def windows(data, rows, length, seed):
    """`rows` random windows of `length` bytes of `data`, the same on every rank that uses this seed."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - length, (rows,), generator=gen).tolist()
    return torch.stack([data[s : s + length] for s in starts])


def local_batch(data, mesh, args, step, device):
    """This rank's inputs and next-character labels: its dp rank's rows of the step's global batch (the same
    whatever the mesh), its cp chunk of each."""
    dp_rank, cp_rank = mesh["dp"].get_local_rank(), mesh["cp"].get_local_rank()
    rows = windows(data, args.batch, args.seq_len + 1, args.seed * 1_000_003 + step).chunk(args.dp)[dp_rank]
    n = args.seq_len // args.cp
    x, y = rows[:, :-1], rows[:, 1:]
    return (t[:, cp_rank * n : (cp_rank + 1) * n].to(device) for t in (x, y))


def mean_over_ranks(value, device):
    """The mean over every rank (tensor-parallel ranks hold equal values: the mean over dp x cp)."""
    t = torch.tensor(float(value), device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


@torch.no_grad()
def validation_loss(model, data, mesh, args, device, batches=4):
    model.eval()
    losses = []
    for b in range(batches):
        x, y = local_batch(data, mesh, args, -1 - b, device)
        logits = model(input_ids=x).logits
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item())
    model.train()
    return mean_over_ranks(sum(losses) / len(losses), device)


def save(model, config, path, rank):
    dcp.save(get_model_state_dict(model), checkpoint_id=str(path / "dcp"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:  # the unsharded HF checkpoint, from a plain model holding the gathered weights
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(full)
        plain.save_pretrained(path / "hf")


def train(args, mesh, device):
    """Build, parallelize, train, validate and (with --save) checkpoint the model on `mesh`."""
    rank = dist.get_rank()
    files = stdlib_sources(max_files=40 if args.tiny else None)
    train, valid = (torch.cat(encode(files[split])) for split in ("train", "valid"))
    model = build_model(args, device)
    config = model.config
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 else None
    parallelize(model, mesh, mp_policy=policy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        shape = f"layers {config.layer_kinds}; {args.batch} x {args.seq_len} characters per step"
        print(f"mesh dp={args.dp} cp={args.cp} tp={args.tp} on {device.type}; {params / 1e6:.2f} M parameters; {shape}",
              flush=True)  # fmt: skip
    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        x, y = local_batch(train, mesh, args, step, device)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            mean = mean_over_ranks(loss.item(), device)
            if rank == 0:
                print(f"step {step + 1:4d}  loss {mean:.4f}  {time.perf_counter() - start:6.1f} s", flush=True)
    elapsed = time.perf_counter() - start
    val = validation_loss(model, valid, mesh, args, device)
    if rank == 0:
        chars = args.steps * args.batch * args.seq_len
        print(f"validation loss {val:.4f} nats/char ({val / math.log(2):.3f} bits); {args.steps} steps in "
              f"{elapsed:.0f} s, {chars / elapsed:.0f} characters/s", flush=True)  # fmt: skip
    if args.save is not None:
        save(model, config, args.save, rank)
        if rank == 0:
            print(f"saved {args.save / 'dcp'} (sharded) and {args.save / 'hf'} (from_pretrained)", flush=True)


def teardown():
    """Leave together and unregister the process groups.

    destroy_process_group() does not join gloo's worker threads while a DeviceMesh still holds its group,
    and torch's DTensor sharding caches hold every mesh until interpreter finalization. A worker that
    drops its last reference to a tensor then cannot take the GIL, and the process aborts at exit
    ("terminate called without an active exception"; seen under load, after all work was done). So
    `python train_mesh.py` leaves through os._exit once this returns, as multiprocessing's children do:
    everything is written and flushed by then, and finalization has nothing left to do that matters."""
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    mesh, device = setup(args)
    train(args, mesh, device)
    teardown()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see teardown()
