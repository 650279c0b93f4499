r"""Train a one-head 2-simplicial layer for a few seconds, then draw which PAIR of keys it reads.

The task needs a pair: every sequence holds random values x_t and two marked positions A and
B (flags in the input); the target at the last position is the product x_A * x_B. One
2-simplicial head solves it exactly: its logit q . (k1_j * k2_k) can score "j is A" plus "k is
B", and its value v1_j * v2_k is the product x_j * x_k. After training (Adam, a few hundred
steps on the CPU) the map of the last query has one bright cell at (j, k) = (A, B), or
(B, A): the head attends to the pair, not to two separate keys.

    python examples/attention_map.py                    # writes docs/attention_map.png
    python examples/attention_map.py --out /tmp/map.png --steps 300

The model is briefly TRAINED (not random): a random head gives a flat, uninformative map.
"""

import argparse
import os
import time

import torch
from torch import nn

from simplicial_attn import two_simplicial_attention
from simplicial_attn.analysis.viz import attention_summary, plot_attention

N = 24  # sequence length; the last position is the query that answers


def make_batch(batch, generator, a=None, b=None):
    """Features [batch, N, 4] = (x_t, is_A, is_B, 1) and the target x_A * x_B."""
    x = torch.rand(batch, N, generator=generator) * 2 - 1
    if a is None:
        # Two distinct marked positions before the last one.
        pos = torch.rand(batch, N - 1, generator=generator).argsort(-1)[:, :2]
        a, b = pos[:, 0], pos[:, 1]
    else:
        a, b = torch.full((batch,), a), torch.full((batch,), b)
    rows = torch.arange(batch)
    feats = torch.zeros(batch, N, 4)
    feats[..., 0] = x
    feats[rows, a, 1] = 1.0
    feats[rows, b, 2] = 1.0
    feats[..., 3] = 1.0
    return feats, x[rows, a] * x[rows, b]


class PairHead(nn.Module):
    """Features -> q, k1, k2, v1, v2 (one head of size dim) -> 2-simplicial attention -> scalar."""

    def __init__(self, dim=8):
        super().__init__()
        self.proj = nn.Linear(4, 5 * dim, bias=False)
        self.out = nn.Linear(dim, 1)
        self.dim = dim

    def qkv(self, feats):
        B = feats.shape[0]
        return [t.view(B, N, 1, self.dim) for t in self.proj(feats).chunk(5, dim=-1)]

    def forward(self, feats):
        o = two_simplicial_attention(*self.qkv(feats), w1=None, w2=None, causal=True)
        return self.out(o[:, -1, 0]).squeeze(-1)


def train(steps, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = PairHead()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    start = time.perf_counter()
    for step in range(steps):
        feats, target = make_batch(128, gen)
        loss = (model(feats) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  mse {loss.item():.5f}  (predicting 0 gives ~0.11)")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f} s")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "attention_map.png"))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--a", type=int, default=6, help="marked position A of the example drawn")
    parser.add_argument("--b", type=int, default=15, help="marked position B of the example drawn")
    args = parser.parse_args()

    model = train(args.steps, args.seed)
    feats, target = make_batch(1, torch.Generator().manual_seed(args.seed + 1), args.a, args.b)
    with torch.no_grad():
        q, k1, k2, _, _ = model.qkv(feats)
        print(f"example: A = {args.a}, B = {args.b}, target {target.item():+.4f}, model {model(feats).item():+.4f}")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        amap = plot_attention(
            q, k1, k2, None, None, query=N - 1, head=0, path=args.out,
            title=f"2-simplicial head trained {args.steps} steps on y = x[A] * x[B] (A = {args.a}, B = {args.b})",
        )  # fmt: skip
        r, c = divmod(int(amap.weights.argmax()), amap.weights.shape[1])
        top = (int(amap.j_positions[r]), int(amap.k_positions[c]))
        print(
            f"query {N - 1}: top pair (j, k) = {top} with weight {amap.weights.max():.3f}, entropy {amap.entropy:.2f}"
        )
        summary = attention_summary(q, k1, k2, None, None)[0]
        print(f"head 0 over all queries: mean entropy {summary['entropy']:.2f} of {summary['max_entropy']:.2f} nats")
    print(f"wrote {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
