"""Reading SASS: nvdisasm's listing of a cubin -> functions -> basic blocks -> natural loops, and
what each instruction costs (tensor-core FLOPs, MUFU ops, shared / global bytes, waits).

No GPU needed: nvdisasm ships with triton (triton/backends/nvidia/bin) and the CUDA toolkit.
Every figure is per *warp-instruction* (one SASS instruction executed by one warp); a warp of
32 active lanes is assumed throughout (predicated-off lanes and masked loads are not seen).

Loops are the natural loops of the control-flow graph (a back edge u -> v where v dominates u),
so out-of-line blocks (retry loops of an mbarrier wait placed after the kernel's body) belong to
the loop whose cycle they are on, and a loop's blocks need not be contiguous.
"""

import dataclasses
import functools
import os
import re
import shutil
import subprocess

_LABEL = re.compile(r"^(\.L_x_\d+):")
_FUNC = re.compile(r"^\s*\.text\.(\S+):")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?P<body>[^;]*);")
_PRED = re.compile(r"^@(!?U?P[T\d]+)\s+")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")

# Tensor-core instructions: FLOPs per warp-instruction.
#   HMMA.MNK (mma.sync, one warp): 2*M*N*K.
#   HGMMA.64xNxK (wgmma, one warpgroup of 4 warps issues it together): 2*64*N*K / 4 per warp.
#   UTCHMMA (tcgen05, one thread issues it for the CTA): its shape lives in a descriptor register,
#   not in the listing, so its FLOPs come from the caller (Function.utc_flops).
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "884": (8, 8, 4)}
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
# Bytes per lane of a load / store by its width suffix (none: 32-bit).
_WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


def find_tool(name):
    """Path of nvdisasm / cuobjdump: CUDA_HOME, PATH, or the copy triton ships; None if none."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [os.path.join(cuda_home, "bin", name), shutil.which(name)]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def disassemble(cubin_path):
    """nvdisasm's listing (with .L_x labels) of a cubin file."""
    tool = find_tool("nvdisasm")
    if tool is None:
        raise FileNotFoundError("nvdisasm not found (set CUDA_HOME, or install triton which ships one)")
    done = subprocess.run([tool, "-c", str(cubin_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {cubin_path}: {done.stderr.strip()[:500]}")
    return done.stdout


def postorder(succs, starts):
    """The blocks reachable from `starts`, each after all of its successors (an iterative
    depth-first search over the successor lists `succs`, so deep graphs do not recurse)."""
    order, seen = [], set()
    for start in starts:
        if start in seen:
            continue
        stack = [(start, iter(succs[start]))]
        seen.add(start)
        while stack:
            v, it = stack[-1]
            nxt = next((w for w in it if w not in seen), None)
            if nxt is None:
                order.append(v)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succs[nxt])))
    return order


@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "" or the guard ("P0", "!UP1", ...)
    op: str  # the opcode with its modifiers ("LDSM.16.M88.4")
    args: str  # the operand text
    labels: tuple  # labels that name this instruction

    @property
    def base(self):
        return self.op.split(".")[0]


@dataclasses.dataclass
class Block:
    start: int  # index of the first instruction
    end: int  # one past the last
    succs: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Loop:
    header: int  # block index
    blocks: frozenset
    parent: "Loop | None" = None
    children: list = dataclasses.field(default_factory=list)

    @property
    def depth(self):
        return 0 if self.parent is None else self.parent.depth + 1


def parse_functions(listing):
    """{function name: [Instr]} of an nvdisasm listing, in program order."""
    funcs, name, labels = {}, None, []
    for line in listing.splitlines():
        m = _FUNC.match(line)
        if m:
            name, labels = m.group(1), []
            funcs[name] = []
            continue
        if name is None:
            continue
        m = _LABEL.match(line)
        if m:
            labels.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            body = m.group("body").strip()
            pm = _PRED.match(body)
            pred = pm.group(1) if pm else ""
            body = body[pm.end() :] if pm else body
            op, _, args = body.partition(" ")
            funcs[name].append(Instr(int(m.group(1), 16), pred, op, args.strip(), tuple(labels)))
            labels = []
    return funcs


def _is_branch(ins):
    # nvcc's loop exits on sm_80..sm_90: `@P1 CALL.REL.NOINC `(.L_x_630)` jumps to a label without
    # pushing a return address (NOINC), a conditional branch in effect; a CALL to a function
    # symbol ($__internal_...) is a call and falls through.
    if ins.base == "CALL":
        return ".NOINC" in ins.op and _TARGET.search(ins.args) is not None
    return ins.base in ("BRA", "BRX", "JMX", "JMP")


def _ends_flow(ins):
    """True when control never falls through `ins`."""
    if ins.base in ("RET", "BPT") or (ins.base == "EXIT" and not ins.pred):
        return True
    if ins.base in ("BRA", "CALL") and _is_branch(ins):
        uniform_cond = ins.op.startswith("BRA.U") and re.match(r"!?UP\d", ins.args)
        return (not ins.pred or ins.pred == "PT") and not uniform_cond
    return ins.base in ("BRX", "JMX", "JMP")


class Function:
    """One kernel's SASS: instructions, basic blocks, natural loops."""

    def __init__(self, name, instrs, tma_bytes=0.0):
        self.name, self.instrs = name, instrs
        # Bytes one warp-instruction UTMALDG moves: a TMA box's shape lives in its descriptor, not
        # in the listing, so the caller gives it (the box over the CTA's warps: one elected
        # thread of one warp issues it, every warp's trip is counted).
        self.tma_bytes = tma_bytes
        self.blocks = self._blocks()
        self.loops = self._loops()

    def _blocks(self):
        ins = self.instrs
        label_at = {lab: i for i, x in enumerate(ins) for lab in x.labels}
        leaders = {0} | set(label_at.values())
        for i, x in enumerate(ins[:-1]):
            if _is_branch(x) or x.base in ("EXIT", "RET", "BPT"):
                leaders.add(i + 1)
        starts = sorted(leaders)
        blocks = [Block(s, e) for s, e in zip(starts, starts[1:] + [len(ins)], strict=True)]
        index = {b.start: k for k, b in enumerate(blocks)}
        for k, b in enumerate(blocks):
            last = ins[b.end - 1]
            if _is_branch(last):
                t = _TARGET.search(last.args)
                if t and t.group(1) in label_at:
                    b.succs.append(index[label_at[t.group(1)]])
            if not _ends_flow(last) and k + 1 < len(blocks):
                b.succs.append(k + 1)
        return blocks

    def _loops(self):
        n = len(self.blocks)
        preds = [[] for _ in range(n)]
        for k, b in enumerate(self.blocks):
            for s in b.succs:
                preds[s].append(k)
        # Reachable blocks in reverse post-order, then iterative dominators (Cooper-Harvey-Kennedy).
        order = postorder([b.succs for b in self.blocks], [0])
        seen = set(order)
        rpo = order[::-1]
        pos = {v: i for i, v in enumerate(rpo)}
        idom = {0: 0}

        def intersect(a, b):
            while a != b:
                while pos[a] > pos[b]:
                    a = idom[a]
                while pos[b] > pos[a]:
                    b = idom[b]
            return a

        changed = True
        while changed:
            changed = False
            for v in rpo[1:]:
                ps = [p for p in preds[v] if p in idom]
                new = functools.reduce(intersect, ps[1:], ps[0])
                if idom.get(v) != new:
                    idom[v], changed = new, True

        def dominates(a, b):
            while True:
                if a == b:
                    return True
                if b == 0:
                    return False
                b = idom[b]

        bodies = {}
        for u in seen:
            for v in self.blocks[u].succs:
                if dominates(v, u):
                    body, work = {v, u}, ([u] if u != v else [])
                    while work:
                        x = work.pop()
                        for p in preds[x]:
                            if p not in body and p in seen:
                                body.add(p)
                                work.append(p)
                    bodies.setdefault(v, set()).update(body)
        loops = sorted((Loop(h, frozenset(b)) for h, b in bodies.items()), key=lambda lp: len(lp.blocks))
        for i, inner in enumerate(loops):
            outer = next((o for o in loops[i + 1 :] if inner.blocks < o.blocks), None)
            if outer is not None:
                inner.parent = outer
                outer.children.append(inner)
        return loops

    def instructions(self, blocks):
        """The instructions of a set of blocks, in program order."""
        return [x for k in sorted(blocks) for x in self.instrs[self.blocks[k].start : self.blocks[k].end]]

    def own_blocks(self, loop, exclude):
        """Blocks of `loop` (None: the whole function) outside the loops in `exclude` nested in it."""
        blocks = set(range(len(self.blocks))) if loop is None else set(loop.blocks)
        for other in exclude:
            if other is not loop and (loop is None or other.blocks < loop.blocks):
                blocks -= other.blocks
        return blocks


def mma_flops_per_warp(ins, utc_flops=None):
    """(shape label, FLOPs one warp-instruction issues) of a tensor-core instruction, else None.
    UTCHMMA (one thread issues it for the CTA) counts `utc_flops` per instruction when given."""
    if ins.base == "HMMA":
        key = ins.op.split(".")[1]
        m, n, k = _HMMA_SHAPES.get(key, (16, 8, 16))
        return f"HMMA.{key}", 2 * m * n * k
    m = _HGMMA.match(ins.op)
    if m:
        mm, nn, kk = (int(g) for g in m.groups())
        return f"HGMMA.{mm}x{nn}x{kk}", 2 * mm * nn * kk / 4
    if ins.base == "UTCHMMA":
        return "UTCHMMA", utc_flops
    return None


def _lane_bytes(op):
    parts = op.split(".")
    return next((_WIDTH[p] for p in reversed(parts) if p in _WIDTH), 4)


def smem_bytes(ins, tma_bytes=0.0):
    """Shared-memory bytes one warp-instruction moves (reads and writes; wgmma / tcgen05 operands
    read from shared memory through their descriptors; cp.async's and a TMA load's (UTMALDG,
    `tma_bytes`: Function.tma_bytes) write of its destination)."""
    op = ins.op
    if ins.base == "UTMALDG":
        return tma_bytes
    if ins.base in ("LDS", "STS", "ATOMS"):
        return 32 * _lane_bytes(op)
    if ins.base in ("LDSM", "STSM"):
        count = {"4": 4, "2": 2}.get(op.split(".")[-1], 1)
        return 128 * count  # 8x8 16-bit matrices, 128 bytes each
    if ins.base == "LDGSTS":
        return 32 * _lane_bytes(op)
    m = _HGMMA.match(op)
    if m:
        mm, nn, kk = (int(g) for g in m.groups())
        operands = [a.strip() for a in ins.args.split(",")]
        elem = 1 if any(t in op for t in ("E4M3", "E5M2", "S8", "U8")) else 4 if "TF32" in op else 2
        from_smem = nn * kk * elem + (mm * kk * elem if len(operands) > 1 and "gdesc" in operands[1] else 0)
        return from_smem / 4  # per warp of the issuing warpgroup
    return 0


def global_bytes(ins, tma_bytes=0.0):
    """Global-memory bytes one warp-instruction requests (loads, stores, cp.async sources, atomics;
    a TMA load, UTMALDG: `tma_bytes`, Function.tma_bytes)."""
    if ins.base in ("LDG", "STG", "LDGSTS", "RED", "ATOM", "ATOMG", "REDG"):
        return 32 * _lane_bytes(ins.op)
    if ins.base == "UTMALDG":
        return tma_bytes
    return 0


def wait_kind(ins):
    """The kind of full wait `ins` is ("bar", "wgmma", "cp.async", "mbarrier"), or None: points where
    the code stops until every earlier asynchronous operation of that kind (or every thread of the
    CTA) is done. A wait that leaves operations pending (DEPBAR.LE SB0, 0x1) is a pipelined wait,
    not a full one."""
    if ins.base == "BAR" and (".SYNC" in ins.op or ".RED" in ins.op):
        return "bar"
    if ins.op.startswith("WARPGROUP.DEPBAR") and re.search(r",\s*0x0\b", ins.args):
        return "wgmma"
    if ins.op.startswith("DEPBAR") and re.search(r"SB0,\s*0x0\b", ins.args):
        return "cp.async"
    if ins.op.startswith("SYNCS.PHASECHK"):
        return "mbarrier"
    return None


def hmma_dest_regs(ins):
    """Registers an HMMA writes (its accumulator fragment), for finding the first consumer."""
    m = re.match(r"R(\d+)", ins.args)
    if not m:
        return set()
    first = int(m.group(1))
    count = 4 if ".F32" in ins.op else 2
    return {f"R{first + i}" for i in range(count)}


def reads_regs(ins):
    """Register names an instruction reads (its operands after the first, the destination)."""
    operands = ins.args.split(",", 1)
    return set(re.findall(r"\bR\d+\b", operands[1])) if len(operands) > 1 else set()
