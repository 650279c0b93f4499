"""Character-level language models on the Python standard library's own source code.

The text is on every machine that runs Python: the *.py files next to the `os` module's
source. Files are split, not positions: a file goes to validation when crc32(file name) % 10
is 0 (about a tenth of the files; the same split on every machine with the same Python), so
validation text is code the model never saw. Characters are bytes (vocabulary 256; the
sources are almost all ASCII).

Training batches are PACKED: each is `batch` segments of up to `seq_len + 1` characters, every
segment cut from ONE file (a file shorter than that gives a shorter segment), concatenated into
one stream with cu_seqlens (sa.two_simplicial_attention_varlen; the SDPA layers use the same
boundaries as a block-diagonal mask). No window ever reaches from one file into another, and
short files cost only their own characters, never padding.

Two models of equal parameter count (the baseline's MLP width is adjusted to match):
    standard:   `depth` SDPA layers
    simplicial: the same, with every `simplicial_every`-th layer 2-simplicial (Roy et al.
                2025 interleave one every 4 layers); windows w1 x w2 over a causal context
Both use RoPE (the tied policy in the 2-simplicial layer, see simplicial_attn.nn.rope), RMS q/k
norm and, per seed, the same initial embedding/head draw and the same batches. Each model is
trained once per seed in `--seeds` (two by default, to show the seed-to-seed spread next to the
difference between the models). Validation loss (nats per character) is measured every
`--eval-every` steps on a fixed set of windows of the held-out files. Every training step is timed;
the summary reports the fastest step and the median (on a shared machine other work only adds
time, so the minimum is the cleaner cost estimate).

    python examples/train_code.py                   # the documented run (a few minutes per model)
    python examples/train_code.py --tiny --steps 3  # smoke test
    python examples/train_code.py --generate        # then: a completion of a Python prompt from the
                                                    # trained 2-simplicial model (rolling caches) and
                                                    # its top-5 next characters after the prompt
Writes train_code.json and train_code.png to --out (default docs/results).
"""

import argparse
import itertools
import json
import math
import os
import pathlib
import statistics
import sys
import time
import zlib

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from model import Decoder, Progress, count_parameters, lr_at, mlp_hidden_for_budget  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results"


def stdlib_sources(max_files=None):
    """{'train': [...], 'valid': [...]} lists of file paths, split by a hash of the file name."""
    files = sorted(pathlib.Path(os.__file__).resolve().parent.glob("*.py"))
    if max_files is not None:
        files = files[:max_files]
    split = {"train": [], "valid": []}
    for f in files:
        split["valid" if zlib.crc32(f.name.encode()) % 10 == 0 else "train"].append(f)
    if not split["valid"]:  # a tiny --max-files may miss every validation file
        split["valid"].append(split["train"].pop())
    return split


def encode(files):
    """Each file's bytes as an int64 tensor (files of fewer than 2 characters are dropped)."""
    streams = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8).long() for f in files]
    return [s for s in streams if len(s) >= 2]


def pack(segments):
    """Segments of L_s + 1 characters -> (inputs [T], next-character targets [T], cu_seqlens [S + 1])."""
    lengths = [len(seg) - 1 for seg in segments]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return torch.cat([seg[:-1] for seg in segments]), torch.cat([seg[1:] for seg in segments]), cu


def random_packed_batch(files, batch, seq_len, generator):
    """`batch` segments of up to seq_len + 1 characters, each from one random file, packed."""
    weights = torch.tensor([float(len(f)) for f in files])  # files drawn by size: every character alike
    segments = []
    for i in torch.multinomial(weights, batch, replacement=True, generator=generator).tolist():
        n = min(seq_len + 1, len(files[i]))
        start = torch.randint(0, len(files[i]) - n + 1, (1,), generator=generator).item()
        segments.append(files[i][start : start + n])
    return pack(segments)


def fixed_packed_batches(files, count, seq_len, batch):
    """`count` segments spread evenly over the files' characters (each inside one file), in packed batches."""
    offsets = list(itertools.accumulate(len(f) for f in files))
    segments = []
    for t in torch.linspace(0, offsets[-1] - 1, count).long().tolist():
        i = next(k for k, end in enumerate(offsets) if t < end)
        n = min(seq_len + 1, len(files[i]))
        start = min(t - (offsets[i] - len(files[i])), len(files[i]) - n)
        segments.append(files[i][start : start + n])
    return [pack(segments[s : s + batch]) for s in range(0, count, batch)]


def build_models(args, seed=0):
    """(standard, simplicial) decoders with equal parameter counts, initialised from `seed`."""

    def build(simplicial, mlp_hidden):
        return Decoder(
            vocab_size=256,
            dim=args.dim,
            depth=args.depth,
            num_heads=args.heads,
            simplicial_every=args.simplicial_every if simplicial else 0,
            simplicial_kv_heads=args.simplicial_kv_heads,
            w1=args.w1,
            w2=args.w2,
            rope=True,
            qk_norm=True,
            mlp_hidden=mlp_hidden,
            backend=args.backend,
        )

    hidden = mlp_hidden_for_budget(lambda h: build(False, h), count_parameters(build(True, 4 * args.dim)))
    torch.manual_seed(seed)
    standard = build(False, hidden)
    torch.manual_seed(seed)
    return standard, build(True, 4 * args.dim)


@torch.no_grad()
def validation_loss(model, batches):
    model.eval()
    total = count = 0.0
    for x, y, cu in batches:
        total += F.cross_entropy(model(x, cu_seqlens=cu), y, reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def make_optimizer(model, args):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))


def train_step(model, opt, x, y, cu):
    loss = F.cross_entropy(model(x, cu_seqlens=cu), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def train(label, model, train_files, valid_batches, args, seed):
    gen = torch.Generator().manual_seed(seed + 1000)  # the same batches for both models of a seed
    opt = make_optimizer(model, args)
    # Step 0 is the untrained model (no training loss yet).
    curve = {"step": [0], "train_loss": [None], "valid_loss": [validation_loss(model, valid_batches)]}
    bar = Progress(args.steps, label)
    running, step_seconds = None, []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        x, y, cu = random_packed_batch(train_files, args.batch, args.seq_len, gen)
        start = time.perf_counter()
        loss = train_step(model, opt, x, y, cu)
        step_seconds.append(time.perf_counter() - start)
        running = loss if running is None else 0.9 * running + 0.1 * loss
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            for key, value in zip(curve, (step + 1, running, validation_loss(model, valid_batches)), strict=True):
                curve[key].append(value)
        bar.update(step + 1, train=running, valid=curve["valid_loss"][-1])
    curve["step_seconds"] = step_seconds
    return curve


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    zoom_from = cfg["steps"] // 3
    top = max(r["seeds"][str(cfg["seeds"][0])]["valid_loss"][1] for r in results["models"].values()) + 0.3
    for name, color in (("standard", "tab:blue"), ("simplicial", "tab:red")):
        run = results["models"][name]
        label = f"{name} {run['layers']}: {run['parameters']:,} params, {run['step_seconds_min']:.3f} s/step (fastest)"
        for i, curve in enumerate(run["seeds"].values()):
            for ax in axes:
                keep = [k for k, s in enumerate(curve["step"]) if ax is axes[0] or s >= zoom_from]
                ax.plot(
                    [curve["step"][k] for k in keep],
                    [curve["valid_loss"][k] for k in keep],
                    color=color,
                    alpha=0.9 if i == 0 else 0.45,
                    ls="-" if i == 0 else "--",
                    label=label if i == 0 else None,
                )
    axes[0].set(xlabel="training step", ylabel="validation loss (nats / character)", ylim=(1.2, top))
    axes[1].set(xlabel="training step (last two thirds, zoomed)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"Char-level LM on the Python stdlib, held-out files: {cfg['depth']} layers, dim {cfg['dim']}, context "
        f"{cfg['seq_len']}, {cfg['steps']} steps x {cfg['batch']}; seeds {', '.join(map(str, cfg['seeds']))} "
        "(solid: first, dashed: others)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--simplicial-every", type=int, default=4, help="every k-th layer is 2-simplicial")
    p.add_argument("--simplicial-kv-heads", type=int, default=2, help="kv heads of the 2-simplicial layers (GQA)")
    p.add_argument("--w1", type=int, default=64)
    p.add_argument("--w2", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--max-files", type=int, default=None, help="read only the first files (smoke tests)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train each model once per seed")
    p.add_argument("--backend", default="auto", help="backend of the 2-simplicial op")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="folder for train_code.json / .png")
    p.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (matplotlib not needed)")
    p.add_argument("--generate", type=int, nargs="?", const=300, default=0, metavar="N",
                   help="after training, print N characters (default 300) generated from --prompt")  # fmt: skip
    p.add_argument("--prompt", default="def read_config(path):\n    ", help="the prompt of --generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    args = p.parse_args(argv)
    if args.tiny:
        args.dim, args.depth, args.heads, args.simplicial_every, args.simplicial_kv_heads = 16, 2, 2, 2, 1
        args.w1, args.w2, args.seq_len, args.batch, args.eval_windows = 8, 4, 24, 4, 4
        args.max_files = args.max_files or 12
        args.eval_every = max(1, args.steps // 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    split = stdlib_sources(args.max_files)
    train_files, valid_files = encode(split["train"]), encode(split["valid"])
    train_chars, valid_chars = sum(map(len, train_files)), sum(map(len, valid_files))
    print(
        f"stdlib sources in {pathlib.Path(os.__file__).resolve().parent}: {len(split['train'])} train files "
        f"({train_chars:,} chars), {len(split['valid'])} validation files ({valid_chars:,} chars); batches pack "
        f"{args.batch} segments of <= {args.seq_len} characters, each inside one file (no window across files)"
    )
    valid_batches = fixed_packed_batches(valid_files, args.eval_windows, args.seq_len, args.batch)
    from simplicial_attn import backends

    results = {
        "task": "train_code",
        "config": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        "data": {
            "train_files": len(split["train"]),
            "valid_files": [f.name for f in split["valid"]],
            "train_chars": train_chars,
            "valid_chars": valid_chars,
            "batches": "packed: segments inside one file each (cu_seqlens)",
        },
        "op_backend": backends.select(args.backend, "cpu", torch.float32),
        "torch_threads": torch.get_num_threads(),
        "models": {},
    }
    for name, model in zip(("standard", "simplicial"), build_models(args), strict=True):
        print(
            f"{name:>10}: layers {model.layer_kinds} (A: SDPA, S: 2-simplicial), MLP width "
            f"{model.blocks[0].mlp.up.out_features}, {count_parameters(model):,} parameters"
        )
        results["models"][name] = {
            "layers": model.layer_kinds,
            "parameters": count_parameters(model),
            "mlp_hidden": model.blocks[0].mlp.up.out_features,
            "seeds": {},
        }
    trained = {}
    for seed in args.seeds:
        for name, model in zip(("standard", "simplicial"), build_models(args, seed), strict=True):
            curve = train(f"{name:>10} seed {seed}", model, train_files, valid_batches, args, seed)
            results["models"][name]["seeds"][str(seed)] = curve
            trained.setdefault(name, model)
    for name, run in results["models"].items():
        finals = [c["valid_loss"][-1] for c in run["seeds"].values()]
        run["final_valid_loss"] = finals
        run["final_valid_loss_mean"] = statistics.mean(finals)
        times = [t for c in run["seeds"].values() for t in c.pop("step_seconds")]
        run["step_seconds_min"], run["step_seconds_median"] = min(times), statistics.median(times)
        shown = ", ".join(f"{v:.4f}" for v in finals)
        print(
            f"{name:>10}: final validation loss per seed {shown} nats/char "
            f"(mean {run['final_valid_loss_mean']:.4f} = {run['final_valid_loss_mean'] / math.log(2):.3f} bits/char); "
            f"seconds per training step: fastest {run['step_seconds_min']:.3f}, median {run['step_seconds_median']:.3f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_code.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_plot:
        plot(results, args.out / "train_code.png")
    print(f"wrote {args.out / 'train_code.json'}" + ("" if args.no_plot else f" and {args.out / 'train_code.png'}"))
    if args.generate:
        results["generation"] = show_generation(trained["simplicial"], args)
    return results


def show_generation(model, args):
    """Prints the top-5 next characters after the prompt and a sampled completion (rolling caches)."""
    prompt = torch.tensor(list(args.prompt.encode()), dtype=torch.long)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(prompt[None])[0, -1].float(), -1)
    top = probs.topk(5)
    shown = ", ".join(
        f"{bytes([int(i)])!r}: {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    )
    print(f"prompt {args.prompt!r}\ntop-5 next characters: {shown}")
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    (tokens,) = model.generate([prompt], args.generate, temperature=args.temperature, top_k=args.top_k, generator=gen)
    seconds = time.perf_counter() - start
    text = bytes(tokens.tolist()).decode("utf-8", errors="replace")
    print(f"completion ({args.generate} characters, temperature {args.temperature}, top_k {args.top_k}, "
          f"{args.generate / seconds:.0f} characters/s with the caches):\n{text}")  # fmt: skip
    return {"prompt": args.prompt, "top5": dict(zip(map(int, top.indices), map(float, top.values), strict=True)),
            "completion": text}  # fmt: skip


if __name__ == "__main__":
    main()
