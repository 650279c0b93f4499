"""generate() of SimplicialForCausalLM with its rolling caches against recomputing without a cache.

    python bench/hf_generate.py                        # 256 new tokens after a 128-token prompt, batch 1
    python bench/hf_generate.py --backend reference --threads 1 --json out.json

The model is untrained (random weights, greedy decoding, no end-of-sequence token), so both runs
produce exactly --new-tokens tokens; they must be the same tokens, which is checked. Without the
cache, every step runs the whole sequence so far through the model again; with it, each token goes
through once and every 2-simplicial layer reads only its rings. Figures are the best of --repeats
runs of each (the CPU is shared: other work only adds time), after a short untimed warm-up.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import environment, timing  # noqa: E402


def build_model(args):
    from simplicial_attn.hf import SimplicialConfig, SimplicialForCausalLM

    config = SimplicialConfig(
        vocab_size=args.vocab, hidden_size=args.dim, intermediate_size=args.mlp, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, simplicial_every=args.simplicial_every,
        simplicial_num_key_value_heads=args.simplicial_kv_heads, w1=args.w1, w2=args.w2,
        simplicial_backend=args.backend,
    )  # fmt: skip
    torch.manual_seed(0)
    return SimplicialForCausalLM(config).eval()


def best_time(fn, repeats):
    """(best seconds of `repeats` runs, the last result)."""
    results = []
    seconds = timing.best_seconds(lambda: results.append(fn()), warmup=0, repeats=repeats)
    return seconds, results[-1]


def measure(args):
    model = build_model(args)
    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    for use_cache in (True, False):  # warm-up: first calls allocate and build what later calls reuse
        model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=use_cache)
    cached_s, cached = best_time(lambda: model.generate(prompt, **common), args.repeats)
    nocache_s, nocache = best_time(lambda: model.generate(prompt, use_cache=False, **common), args.repeats)
    if not torch.equal(cached, nocache):
        raise AssertionError("cached and recomputed generations differ: the cache is wrong")
    tokens = args.batch * args.new_tokens
    return {
        "model": {"layers": model.config.layer_kinds, "parameters": sum(p.numel() for p in model.parameters()),
                  **{k: getattr(args, k) for k in ("dim", "mlp", "heads", "w1", "w2", "vocab", "backend")}},
        "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "cached_s": cached_s, "nocache_s": nocache_s, "speedup": nocache_s / cached_s,
        "cached_tokens_per_s": tokens / cached_s, "nocache_tokens_per_s": tokens / nocache_s,
    }  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--mlp", type=int, default=688)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--simplicial-every", type=int, default=4)
    p.add_argument("--simplicial-kv-heads", type=int, default=2)
    p.add_argument("--w1", type=int, default=64)
    p.add_argument("--w2", type=int, default=16)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--backend", default="auto", help="backend of the 2-simplicial op")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"env": environment.describe("cpu"), **measure(args)}
    m = result["model"]
    print(f"SimplicialForCausalLM {m['layers']}, {m['parameters']:,} parameters (dim {m['dim']}, w1 {m['w1']}, "
          f"w2 {m['w2']}, backend {m['backend']}), {result['env']['threads']} threads, batch {args.batch}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens (best of {args.repeats})")  # fmt: skip
    print(f"  with the rolling caches: {result['cached_s']:7.2f} s  ({result['cached_tokens_per_s']:7.1f} tokens/s)")
    print(f"  recomputing, no cache:   {result['nocache_s']:7.2f} s  ({result['nocache_tokens_per_s']:7.1f} tokens/s)")
    print(f"  speed-up: {result['speedup']:.1f}x (same tokens: yes)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
