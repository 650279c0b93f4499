"""examples/hf_train.py (Trainer steps, save, reload with AutoModelForCausalLM, top-5, generate) and
bench/hf_generate.py, at tiny sizes."""

import math
import pathlib
import sys

import pytest
import torch

pytest.importorskip("transformers", minversion="5", reason="needs transformers >= 5: pip install simplicial-attn[hf]")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))

import hf_train  # noqa: E402

from bench import hf_generate  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny sizes: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hf_train_smoke(tmp_path, capsys, one_thread):
    results = hf_train.main(["--tiny", "--steps", "3", "--save-dir", str(tmp_path)])
    assert results["steps"] == 3 and math.isfinite(results["train_loss"]) and math.isfinite(results["valid_loss"])
    assert results["reload_identical"]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    probs = [p for _, p in results["top5"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    args = hf_train.parse_args(["--tiny"])
    assert results["completion"].startswith(args.prompt)
    out = capsys.readouterr().out
    assert "top-5 next characters" in out and "completion (24 characters" in out


def test_hf_generate_bench_smoke(tmp_path, one_thread):
    sizes = "--dim 32 --mlp 48 --layers 2 --simplicial-every 2 --simplicial-kv-heads 1 --w1 4 --w2 2"
    argv = [*sizes.split(), "--prompt-len", "5", "--new-tokens", "6", "--json", str(tmp_path / "g.json")]
    result = hf_generate.main(argv)  # raises if the cached and recomputed tokens differ
    assert result["model"]["layers"] == "AS" and result["new_tokens"] == 6
    assert result["cached_s"] > 0 and result["nocache_s"] > 0 and (tmp_path / "g.json").is_file()
