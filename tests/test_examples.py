"""The example models and scripts (examples/): structure, parameter budgets, task labels, smoke runs.

The smoke runs train for 3 steps at tiny sizes (a few seconds each); the documented runs and
their outputs live in docs/results/ and docs/examples.md.
"""

import importlib.util
import itertools
import json
import pathlib
import sys

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import match3  # noqa: E402
import train_code  # noqa: E402
from model import Decoder, Progress, count_parameters  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize("every, kinds", [(4, "AAASAAAS"), (0, "AAAAAAAA"), (1, "SSSSSSSS"), (3, "AASAASAA")])
def test_decoder_interleaving(every, kinds):
    model = Decoder(vocab_size=11, dim=16, depth=8, num_heads=2, simplicial_every=every, w1=4, w2=2)
    assert model.layer_kinds == kinds
    assert model(torch.randint(0, 11, (2, 5))).shape == (2, 5, 11)


@pytest.mark.parametrize(
    "module, argv", [(match3, []), (train_code, []), (match3, ["--tiny"]), (train_code, ["--tiny"])]
)
def test_compared_models_have_the_same_budget(module, argv):
    standard, simplicial = module.build_models(module.parse_args(argv))
    assert "S" in simplicial.layer_kinds and "S" not in standard.layer_kinds
    n_std, n_simp = count_parameters(standard), count_parameters(simplicial)
    assert abs(n_std - n_simp) <= 0.002 * n_simp, (n_std, n_simp)


def test_match3_labels_match_brute_force():
    modulus, window = 7, 3
    x = torch.randint(0, modulus, (4, 9), generator=torch.Generator().manual_seed(0))
    y = match3.match3_labels(x, modulus, window)
    for b, i in itertools.product(range(4), range(9)):
        span = range(max(0, i - window + 1), i + 1)
        want = any((x[b, i] + x[b, j] + x[b, k]) % modulus == 0 for j in span for k in span)
        assert bool(y[b, i]) == want, (b, i)


def test_code_split_is_by_file():
    split = train_code.stdlib_sources()
    train, valid = {f.name for f in split["train"]}, {f.name for f in split["valid"]}
    assert valid and train and not train & valid
    assert "os.py" in train | valid


def test_progress_prints_plain_lines_when_not_a_terminal(capsys):
    bar = Progress(10, "run", stream=sys.stdout, every=5)
    for step in range(1, 11):
        bar.update(step, loss=1.0 / step)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("run [") and "10/10" in lines[-1]


def _smoke_argv(tmp_path):
    return ["--tiny", "--steps", "3", "--out", str(tmp_path)] + ([] if HAS_MATPLOTLIB else ["--no-plot"])


def test_match3_smoke(tmp_path):
    results = match3.main(_smoke_argv(tmp_path))
    saved = json.loads((tmp_path / "match3.json").read_text())
    assert saved["models"].keys() == {"standard", "simplicial"}
    assert 0.5 <= saved["majority_baseline"] <= 1
    for run in results["models"].values():
        assert 0 <= run["final_eval_acc"] <= 1 and len(run["curve"]["step"]) == len(run["curve"]["eval_acc"])
    assert (tmp_path / "match3.png").exists() == HAS_MATPLOTLIB


def test_train_code_smoke(tmp_path, capsys):
    results = train_code.main(_smoke_argv(tmp_path) + ["--max-files", "6", "--seeds", "0", "1", "--generate", "20"])
    shown = capsys.readouterr().out
    assert "no window across files" in shown and "top-5 next characters" in shown
    generation = results["generation"]
    assert generation["completion"].startswith(generation["prompt"]) and len(generation["top5"]) == 5
    saved = json.loads((tmp_path / "train_code.json").read_text())
    for run in saved["models"].values():
        assert run["seeds"].keys() == {"0", "1"} and run["step_seconds_min"] > 0
        for curve in run["seeds"].values():
            assert curve["step"][0] == 0 and curve["step"][-1] == 3
            assert all(0 < v < 20 for v in curve["valid_loss"])
    assert saved["models"]["simplicial"]["layers"] == "AS"
    assert (tmp_path / "train_code.png").exists() == HAS_MATPLOTLIB


@pytest.mark.parametrize("every", [2, 1])
def test_generate_equals_recomputing_without_a_cache(every):
    """Greedy generation with the rolling caches (2-simplicial rings, a windowed and a full-causal
    SDPA cache) picks the same tokens as re-running the whole sequence every step, for prompts of
    different lengths, far past the ring sizes."""
    torch.manual_seed(0)
    for window in (None, 5):
        model = Decoder(vocab_size=13, dim=24, depth=2, num_heads=2, simplicial_every=every, w1=4, w2=3,
                        window=window, backend="reference").eval()  # fmt: skip
        prompts = [torch.randint(0, 13, (n,)) for n in (3, 7)]
        outs = model.generate(prompts, max_new_tokens=12, temperature=0)
        for prompt, out in zip(prompts, outs, strict=True):
            seq = prompt.clone()
            with torch.no_grad():
                for _ in range(12):
                    seq = torch.cat([seq, model(seq[None])[0, -1].argmax()[None]])
            assert torch.equal(out, seq)


def test_packed_batches_stay_inside_files():
    files = [torch.arange(5) + 100 * i for i in range(1, 4)]
    x, y, cu = train_code.random_packed_batch(files, 6, 8, torch.Generator().manual_seed(0))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        assert len(set((x[s:e] // 100).tolist()) | set((y[s:e] // 100).tolist())) == 1  # one file per segment
        assert torch.equal(y[s : e - 1], x[s + 1 : e])


def test_positional_experiment_smoke(tmp_path):
    """examples/positional.py: three 2-simplicial variants (and the SDPA yardstick on code) at equal
    budgets, two seeds, a winner per task."""
    import positional

    argv = ["--tiny", "--steps", "2", "--seeds", "0", "1", "--backend", "reference", "--out", str(tmp_path)]
    results = positional.main(argv + ([] if HAS_MATPLOTLIB else ["--no-plot"]))
    assert set(results["match3"]) == set(positional.VARIANTS)
    assert set(results["code"]) == {"SDPA only (yardstick)", *positional.VARIANTS}
    for task in ("match3", "code"):
        budgets = [e["parameters"] for e in results[task].values()]
        assert max(budgets) - min(budgets) <= 0.01 * max(budgets), budgets
        assert all(e["seeds"].keys() == {"0", "1"} for e in results[task].values())
        assert results[f"{task}_winner"] in positional.VARIANTS
    assert json.loads((tmp_path / "positional.json").read_text())["code_winner"] == results["code_winner"]
