"""Mutation self-test: plant known bugs in a temporary copy of the project and check that the tests
catch each one.

    python scripts/mutate.py                  # every mutant: one row each, caught / missed, by which test
    python scripts/mutate.py --cheap          # the cheap subset (tests/test_mutants.py runs it in CI)
    python scripts/mutate.py --list           # names, files and what each mutant stands for
    python scripts/mutate.py NAME [NAME ...]  # chosen mutants
    python scripts/mutate.py --baseline ...   # also run each selection on the unmutated copy

A mutant is a dict in the MUTANTS list of a module in scripts/mutants/ (one module per area):

    name     unique id, e.g. "cuda-fwd-drop-end-barrier"
    path     file relative to the repository root
    old      exact text to replace; it must occur exactly `count` times (default 1), so a mutant
             whose source has changed fails loudly instead of silently testing nothing
    new      the replacement
    tests    pytest arguments (files, -k expressions) of the selection that must fail on it
    cheap    True when that selection takes seconds, not minutes (CI runs these)
    rebuild  True when the mutant is in C++ the extension compiles (csrc/cpu, csrc/*.cpp): the
             copy rebuilds simplicial_attn._C without CUDA first (a minute or two)
    why      the bug it stands for

The copy holds every tracked and untracked-but-not-ignored file, plus the built extension of this
tree, and imports the package from itself (PYTHONPATH), never from the installed one. A mutant is
"caught" when pytest reports failing tests (exit code 1), "missed" when the selection passes, and
an "error" on anything else (a selection that collects nothing, an internal error): an error is
never counted as caught.
"""

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
MUTANT_DIR = ROOT / "scripts" / "mutants"


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple
    why: str
    cheap: bool = False
    rebuild: bool = False
    count: int = 1


def load_mutants():
    """Every mutant of scripts/mutants/*.py, in file then list order; names must be unique."""
    mutants = []
    for module_path in sorted(MUTANT_DIR.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_mutants_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for entry in getattr(module, "MUTANTS", []):
            mutants.append(Mutant(**{**entry, "tests": tuple(entry["tests"])}))
    names = [m.name for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"mutant names must be unique, repeated: {duplicates}")
    return mutants


def check_applies(mutant, root=ROOT):
    """Raises ValueError unless `old` occurs exactly `count` times in the mutant's file."""
    text = (root / mutant.path).read_text()
    found = text.count(mutant.old)
    if found != mutant.count:
        raise ValueError(
            f"mutant {mutant.name}: {mutant.path} must contain its `old` text exactly {mutant.count} time(s), "
            f"found {found} (the source changed: update the mutant)"
        )


def _project_files():
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]


def make_copy(dest):
    """A runnable copy of this tree at `dest` (see the module doc); returns the environment to run it with."""
    for rel in _project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    package = ROOT / "python" / "simplicial_attn"
    for built in package.glob("_C*.so"):
        shutil.copy2(built, dest / "python" / "simplicial_attn" / built.name)
    # The installed package maps simplicial_attn.triton_kernels to triton_kernels/; in the copy a
    # link inside the package does the same for imports through PYTHONPATH.
    (dest / "python" / "simplicial_attn" / "triton_kernels").symlink_to(dest / "triton_kernels")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest / "python"), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _rebuild(dest, env):
    env = {**env, "SIMPLICIAL_ATTN_SKIP_CUDA": "1"}
    for built in (dest / "python" / "simplicial_attn").glob("_C*.so"):
        built.unlink()
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dest, env=env, check=True, capture_output=True
    )


def _first_failure(output):
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return match.group(1) if match else ""


def run_selection(dest, env, tests):
    """(verdict, detail): pytest on `tests` inside the copy."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "missed", ""
    if proc.returncode == 1:
        return "caught", _first_failure(output)
    return "error", f"pytest exit {proc.returncode}: {output.strip().splitlines()[-1] if output.strip() else ''}"


def run_mutant(mutant, baseline=False):
    """Applies `mutant` to a fresh copy and runs its selection; returns (verdict, detail)."""
    check_applies(mutant)
    with tempfile.TemporaryDirectory(prefix="sa-mutant-") as tmp:
        dest = pathlib.Path(tmp) / "project"
        env = make_copy(dest)
        if baseline:
            verdict, detail = run_selection(dest, env, mutant.tests)
            if verdict != "missed":
                return "error", f"the unmutated copy fails this selection ({verdict}: {detail})"
        target = dest / mutant.path
        target.write_text(target.read_text().replace(mutant.old, mutant.new))
        if mutant.rebuild:
            _rebuild(dest, env)
        return run_selection(dest, env, mutant.tests)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all, or the cheap ones with --cheap)")
    parser.add_argument("--cheap", action="store_true", help="only the cheap mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true", help="check each selection passes unmutated first")
    args = parser.parse_args(argv)
    mutants = load_mutants()
    if args.names:
        known = {m.name: m for m in mutants}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            parser.error(f"unknown mutants {unknown}; --list shows them")
        mutants = [known[n] for n in args.names]
    elif args.cheap:
        mutants = [m for m in mutants if m.cheap]
    if args.list:
        for m in mutants:
            print(f"{m.name:40s} {'cheap' if m.cheap else '     '} {m.path}: {m.why}")
        return 0
    width = max((len(m.name) for m in mutants), default=10)
    missed = 0
    for m in mutants:
        verdict, detail = run_mutant(m, baseline=args.baseline)
        missed += verdict != "caught"
        print(f"{m.name:{width}s}  {verdict:6s}  {detail}", flush=True)
    print(f"{len(mutants) - missed} of {len(mutants)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
