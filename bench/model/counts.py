"""What one kernel's SASS does per trip of each loop of its hot nest.

`analyse(function, mma_flops_utc)` finds the hot nest (the chain of nested loops holding tensor-core
instructions; for a kernel without them, no nest) and returns a `Nest`: one `Region` per level
(level -1: the code outside the nest, run once per CTA), each with its per-warp counts and its
phases (the stretches between full waits, for the serialized ceiling).

Which instructions count (sass.py has the per-instruction costs):
- A block of a loop body runs once per trip, except the arms of a two-armed branch: where both
  arms hold code and meet again, one arm is counted, the one holding global-memory instructions
  if only one does, else the one holding cp.async (LDGSTS) if only one does (the aligned copy;
  the other is its unaligned scalar fallback), else the shorter (run-time fallbacks - determinant
  logits, the last pipeline stage - are the longer arms). A branch that only skips code counts it.
- A loop without tensor-core instructions nested in a level (tile loads, mbarrier retry loops)
  counts `side` trips (maps.py), one by default.
- Phases: a level's body, in program order, is cut at each full wait (sass.wait_kind) and, for
  mma.sync code, before the first instruction that reads an HMMA result (the warp waits for the
  tensor core there). Asynchronous MMAs (wgmma, tcgen05) belong to the phase that ends at the
  first later wait of their kind (wrapping around the loop).
"""

import collections
import dataclasses

from . import sass

RESOURCES = ("tensor", "issue", "mufu", "smem", "l2")


@dataclasses.dataclass
class Phase:
    """Per-warp counts of one stretch between waits."""

    instrs: float = 0.0
    mma_flops: dict = dataclasses.field(default_factory=dict)  # kind ("HMMA" / "HGMMA" / "UTCHMMA") -> FLOPs
    mufu: float = 0.0
    smem: float = 0.0
    glob: float = 0.0
    wait: str = ""  # the wait that ends it ("" for the last stretch)

    def add(self, other, weight=1.0):
        self.instrs += other.instrs * weight
        for k, v in other.mma_flops.items():
            self.mma_flops[k] = self.mma_flops.get(k, 0.0) + v * weight
        self.mufu += other.mufu * weight
        self.smem += other.smem * weight
        self.glob += other.glob * weight


@dataclasses.dataclass
class Region:
    level: int
    instrs: float = 0.0
    shapes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    ex2: float = 0.0
    waits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    phases: list = dataclasses.field(default_factory=list)

    def total(self):
        out = Phase()
        for p in self.phases:
            out.add(p)
        return out


@dataclasses.dataclass
class Nest:
    regions: list  # Region per level: [-1 (outside), 0, 1, ...]
    side_loops: dict  # level -> number of non-tensor-core loops nested in it
    structure: str  # "" when the nest is one chain, else why not


def _mma_kind(ins):
    return {"HMMA": "HMMA", "HGMMA": "HGMMA", "UTCHMMA": "UTCHMMA"}.get(ins.base)


def _holds_mma(fn, loop):
    return any(_mma_kind(x) for x in fn.instructions(loop.blocks))


def hot_chain(fn, siblings=1):
    """(chain of loops, outermost first, holding tensor-core instructions; "" or why it is not one chain).
    `siblings` > 1: the innermost level is that many sibling loops (program order), none with a
    tensor-core loop inside (the forward's edge / interior / edge j loops); the chain's last
    element is then their list."""
    tops = [lp for lp in fn.loops if lp.parent is None and _holds_mma(fn, lp)]
    if not tops:
        return [], ""
    if len(tops) > 1:
        return [], f"{len(tops)} separate loops hold tensor-core instructions"
    chain = [tops[0]]
    while True:
        inner = [c for c in chain[-1].children if _holds_mma(fn, c)]
        if not inner:
            return chain, ""
        if len(inner) > 1:
            leaves = not any(_holds_mma(fn, c) for lp in inner for c in lp.children)
            if len(inner) == siblings and leaves:
                return chain + [sorted(inner, key=lambda lp: min(lp.blocks))], ""
            return chain, f"{len(inner)} sibling loops at depth {len(chain)} hold tensor-core instructions"
        chain.append(inner[0])


def _dag(fn):
    """Successors without back edges (edges to a loop header from inside its loop)."""
    back = set()
    for lp in fn.loops:
        for b in lp.blocks:
            if lp.header in fn.blocks[b].succs:
                back.add((b, lp.header))
    dag = [[s for s in blk.succs if (k, s) not in back] for k, blk in enumerate(fn.blocks)]
    # A latch whose only way on is its back edge (nvcc's loop exit `@P CALL.REL.NOINC exit; BRA
    # header`) goes on, after the loop's last trip, at the loop's exits: without them it would be a
    # dead end, and no branch around the loop would have a post-dominator (both arms would count).
    for lp in fn.loops:  # smallest first: a latch of nested loops takes its innermost loop's exits
        exits = sorted({s for b in lp.blocks for s in fn.blocks[b].succs if s not in lp.blocks})
        for b in lp.blocks:
            if not dag[b] and (b, lp.header) in back:
                dag[b] = exits
    return dag


def _post_dominators(succs):
    """Immediate post-dominator of each block of a DAG (None for blocks reaching only the exit)."""
    n = len(succs)
    exit_ = n
    preds_rev = [list(s) if s else [exit_] for s in succs]  # reversed graph: successors become preds
    # Reverse topological order of the DAG (exit first).
    order = sass.postorder(succs, range(n))
    ipdom = {exit_: exit_}
    rank = {exit_: 0}
    for i, v in enumerate(order):  # post-order of the DAG = exit-first order for post-dominance
        rank[v] = i + 1

    def meet(a, b):  # post-dominators sit lower in this order (the exit is 0)
        while a != b:
            while rank[a] > rank[b]:
                a = ipdom[a]
            while rank[b] > rank[a]:
                b = ipdom[b]
        return a

    for v in order:
        ps = preds_rev[v]
        cur = ps[0]
        for p in ps[1:]:
            cur = meet(cur, p)
        ipdom[v] = cur
    return {v: (None if p == exit_ else p) for v, p in ipdom.items() if v != exit_}


def _reach(succs, start, stop, within):
    out, work = set(), [start]
    while work:
        v = work.pop()
        if v == stop or v in out or v not in within:
            continue
        out.add(v)
        work.extend(succs[v])
    return out


def block_weights(fn):
    """1 for every block that counts, 0 for the arm of a two-armed branch not taken (see above)."""
    succs = _dag(fn)
    ipdom = _post_dominators(succs)
    weight = [1.0] * len(fn.blocks)
    everything = set(range(len(fn.blocks)))
    innermost = {}
    for lp in fn.loops:  # smallest first: the first loop holding a block is its innermost
        for k in lp.blocks:
            innermost.setdefault(k, lp.blocks)
    for b, out in enumerate(succs):
        if len(out) != 2 or ipdom.get(b) is None:
            continue
        join = ipdom[b]
        arms = [_reach(succs, s, join, everything) for s in out]
        if not arms[0] or not arms[1]:
            continue  # if-then: the skipped code counts
        within = innermost.get(b, everything)
        if join not in within or not (arms[0] | arms[1]) <= within:
            continue  # a branch that leaves its loop (an exit), not an if / else
        costs = [sum(fn.blocks[k].end - fn.blocks[k].start for k in arm) for arm in arms]
        has_glob = [any(sass.global_bytes(x, 1.0) for x in fn.instructions(arm)) for arm in arms]
        has_async = [any(x.base == "LDGSTS" for x in fn.instructions(arm)) for arm in arms]
        if has_glob[0] != has_glob[1]:
            keep = 0 if has_glob[0] else 1
        elif has_async[0] != has_async[1]:
            keep = 0 if has_async[0] else 1
        else:
            keep = 0 if costs[0] <= costs[1] else 1
        for k in arms[1 - keep] - arms[keep]:
            weight[k] = 0.0
    return weight


def _phases(fn, blocks, weight, utc_flops):
    """The phases of a set of blocks (program order), each block's counts scaled by its weight."""
    phases = [Phase()]
    pending_regs = set()
    async_flops = []  # (kind, flops) of asynchronous MMAs not yet waited for
    first_open = None  # asynchronous MMAs issued before the first wait go to the last wait (wrap)
    for k in sorted(blocks):
        w = weight[k]
        if not w:
            continue
        for ins in fn.instrs[fn.blocks[k].start : fn.blocks[k].end]:
            cur = phases[-1]
            kind = _mma_kind(ins)
            if not kind and pending_regs and sass.reads_regs(ins) & pending_regs:
                cur.wait = "mma result"
                phases.append(Phase())
                cur = phases[-1]
                pending_regs = set()
            cur.instrs += w
            cur.smem += sass.smem_bytes(ins, fn.tma_bytes) * w
            cur.glob += sass.global_bytes(ins, fn.tma_bytes) * w
            if ins.base == "MUFU":
                cur.mufu += w
            if kind:
                _, flops = sass.mma_flops_per_warp(ins, utc_flops)
                flops = (flops or 0.0) * w
                if kind == "HMMA":
                    cur.mma_flops[kind] = cur.mma_flops.get(kind, 0.0) + flops
                    pending_regs |= sass.hmma_dest_regs(ins)
                else:
                    async_flops.append((kind, flops))
            wk = sass.wait_kind(ins)
            if wk:
                if wk in ("wgmma", "mbarrier"):
                    done = [f for f in async_flops if (f[0] == "HGMMA") == (wk == "wgmma")]
                    for kind_, f in done:
                        cur.mma_flops[kind_] = cur.mma_flops.get(kind_, 0.0) + f
                    async_flops = [f for f in async_flops if f not in done]
                    if first_open is None:
                        first_open = len(phases) - 1
                cur.wait = wk
                phases.append(Phase())
                pending_regs = set()
    # Asynchronous MMAs still open at the end are waited for at the first wait of the next trip.
    target = phases[first_open] if first_open is not None else phases[-1]
    for kind_, f in async_flops:
        target.mma_flops[kind_] = target.mma_flops.get(kind_, 0.0) + f
    return [p for p in phases if p.instrs]


def analyse(fn, utc_flops=None, side=None, siblings=None):
    """The Nest of a sass.Function (see module docstring). `side`: {level: trips} of the
    non-tensor-core loops nested in a level. `siblings`: the trips of each of the sibling loops
    that make up the innermost level, in program order (maps.Trips.siblings); the level's region
    is then their trip-weighted mix, per trip of the level (the level's trips are their sum)."""
    chain, structure = hot_chain(fn, len(siblings) if siblings else 1)
    weight = block_weights(fn)
    side = side or {}
    if chain and isinstance(chain[-1], list):
        total = sum(siblings) or 1
        for lp, trips in zip(chain[-1], siblings, strict=True):
            for b in lp.blocks:
                weight[b] *= trips / total
    regions, side_loops = [], {}
    for level in range(-1, len(chain)):
        loop = chain[level] if level >= 0 else None
        inner = chain[level + 1] if level + 1 < len(chain) else None
        inner = inner if isinstance(inner, list) else [inner] if inner else []
        if isinstance(loop, list):  # the sibling loops: their blocks, each weighted above
            own = set().union(*(lp.blocks for lp in loop))
        else:
            own = fn.own_blocks(loop, inner)
        if loop is None and chain:
            own -= chain[0].blocks
        # Non-tensor-core loops directly inside this level repeat `side` trips.
        nested = [lp for lp in fn.loops if lp.blocks <= own and lp.blocks and not _holds_mma(fn, lp)]
        top_nested = [lp for lp in nested if not any(lp.blocks < o.blocks for o in nested)]
        side_loops[level] = len(top_nested)
        trips = side.get(level, 1)
        w = list(weight)
        if trips != 1:
            for lp in top_nested:
                for b in lp.blocks:
                    w[b] *= trips
        reg = Region(level)
        reg.phases = _phases(fn, own, w, utc_flops)
        for k in own:
            for ins in fn.instrs[fn.blocks[k].start : fn.blocks[k].end]:
                if not w[k]:
                    continue
                reg.instrs += w[k]
                shape = sass.mma_flops_per_warp(ins, utc_flops)
                if shape:
                    reg.shapes[shape[0]] += w[k]
                if ins.op == "MUFU.EX2":
                    reg.ex2 += w[k]
                wk = sass.wait_kind(ins)
                if wk:
                    reg.waits[wk] += w[k]
        regions.append(reg)
    return Nest(regions, side_loops, structure)
