"""The project's structure: no import circle among its Python modules, the package's layers import
only downwards, and no comment or document cites a project file that does not exist.

Static (ast / text) walks over the files git knows, so they cost a second and hold for code no
other test imports (bench/, scripts/, examples/).
"""

import ast
import io
import os
import pathlib
import re
import subprocess
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "python/simplicial_attn"
# Where a dotted name lives: the package maps `simplicial_attn` to python/simplicial_attn and its
# Triton kernels (setup.py's package_dir); bench/ is a package; tests/, examples/ and scripts/ are
# folders of scripts that import their siblings by bare name.
ROOTS = {"simplicial_attn.triton_kernels": "triton_kernels", "simplicial_attn": PACKAGE, "bench": "bench"}
SCRIPT_DIRS = ("tests", "examples", "scripts", "bench")
# Submodules that are not Python files (they import nothing of the project).
COMPILED = {"simplicial_attn._C": "the C++ extension"}
# The package's floors (issue 22): a module may import its own floor or the floors below it.
FLOORS = {
    "problem": 0,
    "backends": 1,
    "triton_kernels": 1,
    "ops": 2,
    "nn": 3,
    "analysis": 3,
    "hf": 4,
    "parallel": 4,
    "__init__": 5,
}


def _project_files():
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(p for p in out if (ROOT / p).is_file())


def _python_files():
    return [p for p in _project_files() if p.endswith(".py")]


def _module_file(dotted, files):
    """The file of an absolute dotted module name, or None when it is not the project's."""
    for prefix, folder in ROOTS.items():
        if dotted == prefix or dotted.startswith(prefix + "."):
            rest = dotted[len(prefix) :].lstrip(".").replace(".", "/")
            base = f"{folder}/{rest}" if rest else folder
            for cand in (base + ".py", base + "/__init__.py"):
                if cand in files:
                    return cand
            return None
    return None


def _dotted_of(path):
    """The absolute dotted name of a package file (None for scripts)."""
    for prefix, folder in sorted(ROOTS.items(), key=lambda kv: -len(kv[1])):
        if path.startswith(folder + "/"):
            rest = path[len(folder) + 1 : -len(".py")].replace("/", ".")
            rest = rest.removesuffix("__init__").rstrip(".")
            return f"{prefix}.{rest}" if rest else prefix
    return None


def _imports(path, files):
    """The project files `path` imports (anywhere in it: a function-level import closes a circle
    as surely as a top-level one)."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    dotted = _dotted_of(path)
    package = None
    if dotted is not None:
        package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
    here = str(pathlib.PurePosixPath(path).parent)
    found = set()

    def add(name, names=()):
        target = _module_file(name, files)
        if target is None and "." not in name and here in SCRIPT_DIRS:
            sibling = f"{here}/{name}.py"
            target = sibling if sibling in files else None
        submodules = [COMPILED.get(f"{name}.{n}") or _module_file(f"{name}.{n}", files) for n in names]
        found.update(t for t in submodules if t and t in files)
        # `from pkg import name` imports pkg itself unless every name is a submodule of it
        if target and not (names and all(submodules)):
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                add(f"{base}.{node.module}" if node.module else base, names)
            else:
                add(node.module, names)
    found.discard(path)
    return found


def _graph():
    files = set(_python_files())
    return {p: _imports(p, files) for p in sorted(files)}


def _circles(graph):
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports():
    """A self-check, so an empty graph cannot pass the circle test: known edges are found."""
    graph = _graph()
    assert f"{PACKAGE}/problem.py" in graph[f"{PACKAGE}/ops/library.py"]
    assert f"{PACKAGE}/backends/__init__.py" in graph[f"{PACKAGE}/ops/library.py"]
    assert "tests/cases.py" in graph["tests/test_op.py"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    circles = _circles(_graph())
    assert not circles, "import circles among the project's modules:\n" + "\n".join(" <-> ".join(c) for c in circles)


def _floor(path):
    if path.startswith("triton_kernels/"):
        return FLOORS["triton_kernels"]
    if path.startswith(PACKAGE + "/"):
        return FLOORS.get(path[len(PACKAGE) + 1 :].split("/")[0].removesuffix(".py"))
    return None


def test_package_layers_import_only_downwards():
    """problem (0) < backends, triton_kernels (1) < ops (2) < nn, analysis (3) < hf, parallel (4)
    < the package's __init__ (5, the public face, which may import anything)."""
    upward = []
    for path, targets in _graph().items():
        mine = _floor(path)
        for target in targets:
            theirs = _floor(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{path} (floor {mine}) imports {target} (floor {theirs})")
    assert not upward, "imports that go up the package's floors:\n" + "\n".join(upward)


def test_every_package_module_has_a_floor():
    tops = {p[len(PACKAGE) + 1 :].split("/")[0].removesuffix(".py") for p in _python_files() if p.startswith(PACKAGE)}
    assert tops <= set(FLOORS), f"modules without a floor in FLOORS: {sorted(tops - set(FLOORS))}"


# ---- references to project files ----------------------------------------------------------------

_EXT = r"(?:py|md|h|hpp|cpp|cc|cu|cuh|sh|toml|cmake)"
# A path-like token ending in a source or document extension (not a glob `*_kernel.cuh`, not a URL).
_FILE_REF = re.compile(r"(?<![\w./:*-])((?:[\w.-]+/)*[\w-]+\." + _EXT + r")(?![\w/])")
# A document cited by its upper-case name (two hyphenated words or more).
_DOC_REF = re.compile(r"(?<![\w-])([A-Z]{2,}(?:-[A-Z]{2,})+)(?![\w-])")


def _comments(path):
    """(line, text) of what a reader reads as prose: Markdown files whole, comments and docstrings."""
    text = (ROOT / path).read_text(errors="replace")
    if path.endswith(".md"):
        yield 1, text
    elif path.endswith(".py"):
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc is not None:
                    yield node.body[0].lineno, doc
    elif path.endswith((".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")):
        for m in re.finditer(r"//[^\n]*|/\*.*?\*/", text, re.S):
            yield text.count("\n", 0, m.start()) + 1, m.group(0)
    elif path.endswith((".sh", ".toml", ".txt")) or path == "Makefile":
        for m in re.finditer(r"#[^\n]*", text):
            yield text.count("\n", 0, m.start()) + 1, m.group(0)


def _resolves(ref, path, files, folders):
    here = pathlib.PurePosixPath(path).parent
    first = ref.split("/")[0]
    candidates = {ref, os.path.normpath(str(here / ref)), f"python/{ref}"}
    if candidates & files:
        return True
    if "/" not in ref:  # a bare file name: some project file of that name
        return any(p.endswith("/" + ref) for p in files)
    if first in folders or first == "simplicial_attn" or f"{here}/{first}" in folders:
        return any(p.endswith("/" + ref) for p in files)  # e.g. cuda/api.cpp for csrc/cuda/api.cpp
    return True  # another project's path (flash-attention's hopper/flash.h, ...): not checked


_MODULE_REF = re.compile(r"(?<![\w.])(simplicial_attn(?:\.\w+)+)")


def _top_level_names(path):
    names = set()
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _module_ref_resolves(dotted, files):
    """A dotted name under the package: each part a submodule of the one before, until one is a
    name that module defines or imports (the rest, attributes of that name, are not checked)."""
    parts = dotted.split(".")
    module = _module_file(parts[0], files)
    for i in range(1, len(parts)):
        prefix = ".".join(parts[: i + 1])
        sub = COMPILED.get(prefix) or _module_file(prefix, files)
        if sub is None:
            return module is not None and parts[i] in _top_level_names(module)
        if sub not in files:
            return True  # the compiled extension
        module = sub
    return True


def _dangling():
    paths = _project_files()
    files = set(paths)
    folders = {str(pathlib.PurePosixPath(p).parent) for p in paths} | {p.split("/")[0] for p in paths if "/" in p}
    stems = {pathlib.PurePosixPath(p).name.split(".")[0] for p in paths}
    out = []
    for path in paths:
        if path.startswith(("bench/results/", "docs/results/")):  # recorded outputs, not prose
            continue
        for line, text in _comments(path):
            out += [
                f"{path}:{line}: {m[1]}" for m in _FILE_REF.finditer(text) if not _resolves(m[1], path, files, folders)
            ]
            out += [f"{path}:{line}: {m[1]} (a document)" for m in _DOC_REF.finditer(text) if m[1] not in stems]
            mods = _MODULE_REF.finditer(text)
            out += [f"{path}:{line}: {m[1]} (a module)" for m in mods if not _module_ref_resolves(m[1], files)]
    return out


def test_the_reference_scan_finds_a_missing_file():
    """A self-check: the scan reports a cited file that does not exist, and accepts one that does."""
    files = {"csrc/include/problem.h", "python/simplicial_attn/problem.py", "docs/CONTRACT.md"}
    folders = {"csrc", "csrc/include", "python", "python/simplicial_attn", "docs"}
    assert _resolves("problem.h", "csrc/cpu/x.cpp", files, folders)
    assert _resolves("simplicial_attn/problem.py", "csrc/ops.cpp", files, folders)
    assert not _resolves("interface.md", "csrc/cuda/tile.cuh", files, folders)
    assert not _resolves("csrc/include/missing.h", "README.md", files, folders)
    assert _resolves("hopper/flash.h", "README.md", files, folders)
    assert _DOC_REF.findall("see RELEASE-NOTES and AVX-512") == ["RELEASE-NOTES"]
    package = set(_python_files())
    assert _module_ref_resolves("simplicial_attn.nn.layer.TwoSimplicialAttention.forward", package)
    assert _module_ref_resolves("simplicial_attn.two_simplicial_attention", package)
    assert not _module_ref_resolves("simplicial_attn.nn.no_such_module", package)


def test_no_dangling_reference_to_a_project_file():
    dangling = _dangling()
    assert not dangling, "comments / documents citing project files that do not exist:\n" + "\n".join(dangling)


if __name__ == "__main__":  # the whole report: python tests/test_layering.py
    print("\n".join(" <-> ".join(c) for c in _circles(_graph())) or "no import circle")
    print("\n".join(_dangling()) or "no dangling reference")
