"""Which positional encoding suits 2-simplicial attention? Three variants on two tasks.

    trilinear + tied RoPE       the trilinear logits with the tied-pair rotary (rope.TiedRotary:
                                relative positions at the price of 3/4 of D free in k1 and k2)
    determinant + chunk rotary  the determinant logits (CONTRACT §8) with every 3-channel chunk
                                rotated about its third axis (rope.ChunkRotary: exact relative
                                positions, nothing tied; Roy et al. 2025, §5)
    no positional encoding      the trilinear logits; position enters through the windows only

Every variant has the same parameter budget (the MLP width absorbs the difference: the tied
rotary projects k1 and k2 to 3D/4), the same seeds, batches, optimiser and schedule; each is
trained once per seed in --seeds.

    match3   examples/match3.py's task and model: one 2-simplicial block, window 6; the label
             does not depend on order inside the window, so position can only help by telling
             the model where the window is.
    code     examples/train_code.py's character-level model on the Python standard library
             (packed files, held-out files for validation): depth 4, every 4th layer
             2-simplicial (AAAS), the SDPA layers always with standard RoPE; the SDPA-only
             model of the same budget is trained too, as the yardstick.

    python examples/positional.py                       # both tasks, two seeds (about an hour on 2 cores)
    python examples/positional.py --task match3 --tiny --steps 3   # smoke test
Writes positional.json and positional.png to --out (default docs/results).
"""

import argparse
import json
import pathlib
import statistics
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import match3  # noqa: E402
import train_code  # noqa: E402
from model import Decoder, count_parameters, mlp_hidden_for_budget  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results"

VARIANTS = {
    "trilinear + tied RoPE": dict(logits="trilinear", simplicial_rope=True),
    "determinant + chunk rotary": dict(logits="determinant", simplicial_rope=True),
    "no positional encoding": dict(logits="trilinear", simplicial_rope=False),
}
# A head dim both rotaries accept: a multiple of 3 (determinant chunks) and of 4 (tied pairs).
HEAD_DIM = {"full": 24, "tiny": 12}


def _equal_budget(builders):
    """{name: model builder(mlp_hidden)} -> {name: mlp_hidden} giving every model the largest one's
    parameter count at the default MLP width."""
    target = max(count_parameters(build(None)) for build in builders.values())
    return {name: mlp_hidden_for_budget(build, target) for name, build in builders.items()}


def match3_models(args, seed):
    """{variant: one-block Decoder} of match3's task at equal budgets, initialised from `seed`."""
    margs = match3.parse_args(["--tiny"] if args.tiny else [])
    head_dim = HEAD_DIM["tiny" if args.tiny else "full"]

    def builder(options):
        def build(mlp_hidden):
            return Decoder(
                vocab_size=margs.modulus, dim=margs.dim, depth=1, num_heads=margs.heads, simplicial_every=1,
                w1=margs.window, w2=margs.window, rope=None, qk_norm=False, num_outputs=2, backend=args.backend,
                simplicial_head_dim=head_dim, mlp_hidden=mlp_hidden, **options,
            )  # fmt: skip

        return build

    builders = {name: builder(options) for name, options in VARIANTS.items()}
    hidden = _equal_budget(builders)
    models = {}
    for name, build in builders.items():
        torch.manual_seed(seed)
        models[name] = build(hidden[name])
    return margs, models


def code_models(args, seed):
    """{model: Decoder} of train_code's task: the SDPA-only yardstick and the three variants."""
    targs = train_code.parse_args(["--tiny"] if args.tiny else [])
    head_dim = HEAD_DIM["tiny" if args.tiny else "full"]

    def builder(options, simplicial=True):
        def build(mlp_hidden):
            return Decoder(
                vocab_size=256, dim=targs.dim, depth=targs.depth, num_heads=targs.heads,
                simplicial_every=targs.simplicial_every if simplicial else 0,
                simplicial_kv_heads=targs.simplicial_kv_heads, w1=targs.w1, w2=targs.w2, rope=True, qk_norm=True,
                mlp_hidden=mlp_hidden, backend=args.backend, simplicial_head_dim=head_dim, **options,
            )  # fmt: skip

        return build

    builders = {"SDPA only (yardstick)": builder({}, simplicial=False)}
    builders.update({name: builder(options) for name, options in VARIANTS.items()})
    hidden = _equal_budget(builders)
    models = {}
    for name, build in builders.items():
        torch.manual_seed(seed)
        models[name] = build(hidden[name])
    return targs, models


def run_match3(args, results):
    for seed in args.seeds:
        margs, models = match3_models(args, seed)
        margs.seed, margs.steps, margs.backend = seed, args.steps or margs.steps, args.backend
        eval_gen = torch.Generator().manual_seed(12345)  # one held-out set for every seed and variant
        chunks = [min(256, margs.eval_sequences - s) for s in range(0, margs.eval_sequences, 256)]
        eval_data = [match3.make_batch(c, margs.seq_len, margs.modulus, margs.window, eval_gen) for c in chunks]
        for name, model in models.items():
            curve = match3.train(f"match3 {name} seed {seed}", model, eval_data, margs)
            entry = results["match3"].setdefault(name, {"parameters": count_parameters(model), "seeds": {}})
            entry["seeds"][str(seed)] = {"step": curve["step"], "eval_acc": curve["eval_acc"],
                                         "eval_loss": curve["eval_loss"], "seconds": curve["seconds"]}  # fmt: skip
    results["config"]["match3"] = {k: v for k, v in vars(margs).items() if not isinstance(v, pathlib.Path)}


def run_code(args, results):
    targs = train_code.parse_args(["--tiny"] if args.tiny else [])
    targs.steps = args.steps or targs.steps
    if args.tiny:
        targs.eval_every = max(1, targs.steps // 2)
    split = train_code.stdlib_sources(targs.max_files)
    train_files, valid_files = train_code.encode(split["train"]), train_code.encode(split["valid"])
    valid_batches = train_code.fixed_packed_batches(valid_files, targs.eval_windows, targs.seq_len, targs.batch)
    for seed in args.seeds:
        _, models = code_models(args, seed)
        for name, model in models.items():
            curve = train_code.train(f"code {name} seed {seed}", model, train_files, valid_batches, targs, seed)
            entry = results["code"].setdefault(
                name, {"parameters": count_parameters(model), "layers": model.layer_kinds, "seeds": {}}
            )
            curve["step_seconds_min"] = min(curve.pop("step_seconds"))
            entry["seeds"][str(seed)] = curve
    results["config"]["code"] = {k: v for k, v in vars(targs).items() if not isinstance(v, pathlib.Path)}


def summarise(results):
    """Final metrics per model (mean over seeds) and the winner of each task, printed and stored."""
    for task, metric, better in (("match3", "eval_acc", max), ("code", "valid_loss", min)):
        if not results[task]:
            continue
        finals = {}
        for name, entry in results[task].items():
            per_seed = [s[metric][-1] for s in entry["seeds"].values()]
            entry["final"] = per_seed
            entry["final_mean"] = statistics.mean(per_seed)
            finals[name] = entry["final_mean"]
            shown = ", ".join(f"{v:.4f}" for v in per_seed)
            print(f"{task:>6} {name:>28}: {metric} per seed {shown} (mean {entry['final_mean']:.4f}), "
                  f"{entry['parameters']:,} parameters")  # fmt: skip
        candidates = {n: v for n, v in finals.items() if n in VARIANTS}
        winner = better(candidates, key=candidates.get)
        results[f"{task}_winner"] = winner
        print(f"{task:>6} best 2-simplicial variant: {winner} ({finals[winner]:.4f})")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(
        zip([*VARIANTS, "SDPA only (yardstick)"], ("tab:red", "tab:green", "tab:gray", "tab:blue"), strict=True)
    )
    panels = [(task, metric, label) for task, metric, label in
              (("match3", "eval_acc", "Match3 held-out accuracy"), ("code", "valid_loss", "code: held-out nats / char"))
              if results[task]]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (task, metric, label) in zip(axes[0], panels, strict=True):
        for name, entry in results[task].items():
            for i, curve in enumerate(entry["seeds"].values()):
                ax.plot(curve["step"], curve[metric], color=colors[name], ls="-" if i == 0 else "--",
                        alpha=0.9 if i == 0 else 0.5, label=name if i == 0 else None)  # fmt: skip
        ax.set(xlabel="training step", ylabel=label)
        if task == "code":
            finals = [v for e in results["code"].values() for s in e["seeds"].values() for v in s[metric][1:]]
            ax.set_ylim(min(finals) - 0.05, min(finals) + 1.2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Positional encodings for 2-simplicial attention (solid: seed 0, dashed: seed 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", nargs="+", choices=("match3", "code"), default=["match3", "code"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each task's own)")
    p.add_argument("--backend", default="auto", help="backend of the 2-simplicial op")
    p.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results = {"task": "positional", "variants": {n: dict(o) for n, o in VARIANTS.items()}, "config": {},
               "match3": {}, "code": {}, "torch_threads": torch.get_num_threads()}  # fmt: skip
    if "match3" in args.task:
        run_match3(args, results)
    if "code" in args.task:
        run_code(args, results)
    summarise(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "positional.json").write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_plot:
        plot(results, args.out / "positional.png")
    return results


if __name__ == "__main__":
    main()
