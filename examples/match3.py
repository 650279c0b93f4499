"""Match3 (Sanford et al. 2023): one standard-attention layer against one 2-simplicial layer.

The task, in the causal sliding-window form used here: tokens x_0 .. x_{N-1} are uniform in
Z_M, and the label of position i is

    y_i = 1  iff  there are j, k in the window (i - W, i] (inside [0, N)) with x_i + x_j + x_k = 0 (mod M)

j and k may coincide with each other or with i; this is exactly the pair set a causal
2-simplicial layer with w1 = w2 = W sees. A single 2-simplicial layer can put its attention
on the matching pair directly (the logit is a function of x_i, x_j, x_k together), while a
single dot-product layer scores each j against i alone and must leave the pair search to the
MLP after it. Both models see the same window (the SDPA layer gets a trailing mask of W) and
no positional encoding (the label does not depend on order inside the window).

Both models: embedding -> one pre-norm block (attention + MLP) -> RMSNorm -> 2-way head,
the baseline's MLP widened until the parameter counts match. Fresh random sequences every
step (no overfitting to a training set), one fixed evaluation set, seeded.

    python examples/match3.py                  # the documented run (a few minutes on 2 CPU cores)
    python examples/match3.py --tiny --steps 3 # smoke test
Writes match3.json and match3.png to --out (default docs/results).
"""

import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from model import Decoder, Progress, count_parameters, lr_at, mlp_hidden_for_budget  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results"


def match3_labels(x, modulus, window):
    """x [B, N] int in Z_M -> y [B, N] bool: is there a pair j, k in (i - W, i] with x_i + x_j + x_k = 0 mod M."""
    n = x.shape[1]
    i = torch.arange(n, device=x.device)
    j = i[:, None] - torch.arange(window, device=x.device)  # [N, W], window positions of each i
    valid = j >= 0
    xj = x[:, j.clamp(min=0)]  # [B, N, W]
    total = x[:, :, None, None] + xj[:, :, :, None] + xj[:, :, None, :]
    hit = (total % modulus == 0) & valid[None, :, :, None] & valid[None, :, None, :]
    return hit.flatten(2).any(-1)


def make_batch(batch, seq_len, modulus, window, generator):
    x = torch.randint(0, modulus, (batch, seq_len), generator=generator)
    return x, match3_labels(x, modulus, window).long()


def build_models(args):
    """(baseline, simplicial): one block each, same width/heads/window, equal parameter counts."""

    def build(simplicial, mlp_hidden):
        return Decoder(
            vocab_size=args.modulus,
            dim=args.dim,
            depth=1,
            num_heads=args.heads,
            simplicial_every=1 if simplicial else 0,
            w1=args.window,
            w2=args.window,
            window=args.window,
            rope=None,
            qk_norm=False,
            mlp_hidden=mlp_hidden,
            num_outputs=2,
            backend=args.backend,
        )

    torch.manual_seed(args.seed)
    simplicial = build(True, 4 * args.dim)
    target = count_parameters(simplicial)
    hidden = mlp_hidden_for_budget(lambda h: build(False, h), target)
    torch.manual_seed(args.seed)
    return build(False, hidden), simplicial


@torch.no_grad()
def evaluate(model, data):
    model.eval()
    correct = total = 0
    loss = 0.0
    for x, y in data:
        logits = model(x)
        loss += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    model.train()
    return loss / total, correct / total


def train(name, model, eval_data, args):
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same training stream for both models
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    curve = {"step": [], "train_loss": [], "eval_loss": [], "eval_acc": []}
    bar = Progress(args.steps, f"{name:>10}")
    start = time.perf_counter()
    running = None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        x, y = make_batch(args.batch, args.seq_len, args.modulus, args.window, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            eval_loss, acc = evaluate(model, eval_data)
            for key, value in zip(curve, (step + 1, running, eval_loss, acc), strict=True):
                curve[key].append(value)
        bar.update(step + 1, loss=running, acc=curve["eval_acc"][-1] if curve["eval_acc"] else float("nan"))
    curve["seconds"] = time.perf_counter() - start
    return curve


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, color in (("standard", "tab:blue"), ("simplicial", "tab:red")):
        run = results["models"][name]
        label = f"{run['label']} ({run['parameters']:,} params)"
        ax_acc.plot(run["curve"]["step"], run["curve"]["eval_acc"], color=color, label=label)
        ax_loss.plot(run["curve"]["step"], run["curve"]["eval_loss"], color=color, label=label)
    ax_acc.axhline(results["majority_baseline"], color="gray", ls="--", label="majority class")
    ax_acc.set(xlabel="training step", ylabel="held-out accuracy", ylim=(0.4, 1.01))
    ax_loss.set(xlabel="training step", ylabel="held-out cross-entropy", yscale="log")
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_loss.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"Match3, M={cfg['modulus']}, window W={cfg['window']}, N={cfg['seq_len']}: "
        f"one attention layer, {cfg['steps']} steps x {cfg['batch']} sequences"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modulus", type=int, default=32, help="M: tokens live in Z_M")
    p.add_argument("--window", type=int, default=6, help="W: pairs (j, k) come from (i - W, i]")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-sequences", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="backend of the 2-simplicial op")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="folder for match3.json / match3.png")
    p.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (matplotlib not needed)")
    args = p.parse_args(argv)
    if args.tiny:
        args.dim, args.heads, args.seq_len, args.batch = 16, 2, 12, 8
        args.eval_sequences, args.eval_every = 16, max(1, args.steps // 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    eval_gen = torch.Generator().manual_seed(args.seed + 12345)
    chunks = [min(256, args.eval_sequences - s) for s in range(0, args.eval_sequences, 256)]
    eval_data = [make_batch(c, args.seq_len, args.modulus, args.window, eval_gen) for c in chunks]
    positive = sum(y.sum().item() for _, y in eval_data) / sum(y.numel() for _, y in eval_data)
    majority = max(positive, 1 - positive)
    print(f"Match3 M={args.modulus} W={args.window} N={args.seq_len}: {positive:.1%} positive labels (held out)")

    baseline, simplicial = build_models(args)
    models = {
        "standard": (baseline, "1 SDPA layer"),
        "simplicial": (simplicial, "1 2-simplicial layer"),
    }
    results = {
        "task": "match3",
        "config": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
    }
    results.update(positive_fraction=positive, majority_baseline=majority, models={})
    for name, (model, label) in models.items():
        params = count_parameters(model)
        print(f"{name:>10}: {label}, MLP width {model.blocks[0].mlp.up.out_features}, {params:,} parameters")
        curve = train(name, model, eval_data, args)
        results["models"][name] = {
            "label": label,
            "parameters": params,
            "mlp_hidden": model.blocks[0].mlp.up.out_features,
            "final_eval_acc": curve["eval_acc"][-1],
            "final_eval_loss": curve["eval_loss"][-1],
            "curve": curve,
        }
    for name, run in results["models"].items():
        print(
            f"{name:>10}: held-out accuracy {run['final_eval_acc']:.4f}, loss {run['final_eval_loss']:.4f} "
            f"({run['curve']['seconds']:.0f} s)"
        )
    print(f"  majority: {majority:.4f}")
    from simplicial_attn import backends

    results["op_backend"] = backends.select(args.backend, "cpu", torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "match3.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_plot:
        plot(results, args.out / "match3.png")
    print(f"wrote {args.out / 'match3.json'}" + ("" if args.no_plot else f" and {args.out / 'match3.png'}"))
    return results


if __name__ == "__main__":
    main()
