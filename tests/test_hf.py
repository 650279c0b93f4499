"""The Hugging Face model (simplicial_attn.hf): config and Auto registration, padding, generation with the
rolling caches against no-cache recomputation, save/load, torch.compile and one Trainer step.

Tiny float64 models (width 32, four layers ASAS, windows 5 x 3), so greedy decoding has no near-ties
and cached and recomputed logits agree to rounding. The 2-simplicial layers use backend "auto";
`SIMPLICIAL_ATTN_BACKEND=reference` runs them through the reference instead (needed while the C++
CPU backend lacks decoding or the determinant logits).
"""

import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", minversion="5", reason="needs transformers >= 5: pip install simplicial-attn[hf]")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, Trainer, TrainingArguments  # noqa: E402

import simplicial_attn.hf as sh  # noqa: E402
from simplicial_attn.nn.layer import TwoSimplicialAttention  # noqa: E402
from simplicial_attn.nn.sdpa import DotProductAttention  # noqa: E402

# The package's q/k norm computes in float32 whatever the model dtype; torch warns once per float64 call.

PAD = 0
PROMPTS = ([5, 17, 3, 29, 8, 11, 2], [33, 7], [9, 21, 14, 6, 38, 25, 4, 12, 30, 19, 10])
NEW = 12  # with rings of w + 4 - 1 slots (max_chunk 4) every ring wraps around


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides):
    fields = dict(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, simplicial_num_key_value_heads=1, simplicial_every=2, w1=5, w2=3, pad_token_id=PAD,
    )  # fmt: skip
    fields.update(overrides)
    torch.manual_seed(0)
    return sh.SimplicialForCausalLM(sh.SimplicialConfig(**fields)).double().eval()


def determinant():
    """head_dim 12: a multiple of 3 (determinant) and of 4."""
    return dict(simplicial_logits="determinant", hidden_size=24, num_attention_heads=2, num_key_value_heads=1)


def padded(prompts, side):
    """(input_ids, attention_mask) [B, P] with every prompt padded on `side` to the longest."""
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), PAD)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        cols = slice(P - len(p), P) if side == "left" else slice(0, len(p))
        ids[b, cols], mask[b, cols] = torch.tensor(p), 1
    return ids, mask


# ---- config, registration, structure ---------------------------------------------------------------


def test_auto_classes_resolve_the_model_type():
    config = AutoConfig.for_model(
        "simplicial", vocab_size=40, hidden_size=32, num_hidden_layers=8, num_attention_heads=4
    )
    assert type(config) is sh.SimplicialConfig and config.layer_kinds == "AAASAAAS"
    assert type(AutoModelForCausalLM.from_config(config)) is sh.SimplicialForCausalLM
    assert type(AutoModel.from_config(config)) is sh.SimplicialModel


@pytest.mark.parametrize("every, kinds", [(4, "AAAS"), (2, "ASAS"), (1, "SSSS"), (0, "AAAA")])
def test_layers_follow_simplicial_every(every, kinds):
    model = tiny(simplicial_every=every)
    assert model.config.layer_kinds == kinds
    for layer, kind in zip(model.model.layers, kinds, strict=True):
        attn = layer.self_attn
        assert isinstance(attn, TwoSimplicialAttention if kind == "S" else DotProductAttention)
        heads = (attn.num_heads, attn.num_kv_heads, attn.head_dim)
        assert heads == ((4, 1, 8) if kind == "S" else (4, 2, 8))
        if kind == "S":
            assert (attn.w1, attn.w2, attn.logits, attn.backend) == (5, 3, "trilinear", "auto")
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == 48  # SwiGLU


@pytest.mark.parametrize(
    "fields, exc, names",
    [
        (dict(w1=0), ValueError, "w1"),
        (dict(w2=2.5), TypeError, "w2"),
        (dict(w1="big"), TypeError, "w1"),
        (dict(simplicial_logits="det"), ValueError, "simplicial_logits"),
        (dict(simplicial_logits="determinant", simplicial_rope=False), ValueError, "divisible by 3"),  # D = 8
        (dict(simplicial_backend="gpu"), ValueError, "simplicial_backend"),
        (dict(num_key_value_heads=3), ValueError, "num_key_value_heads"),
        (dict(hidden_size=24, num_attention_heads=4), ValueError, "head_dim % 4"),  # tied rotary
        (dict(hidden_size=30, num_attention_heads=4), ValueError, "hidden_size"),
        (dict(simplicial_every=-1), ValueError, "simplicial_every"),
    ],
)
def test_bad_config_names_the_field(fields, exc, names):
    """CONTRACT §4: a ValueError / TypeError naming the field, not huggingface_hub's own error types."""
    with pytest.raises(exc, match=names):
        sh.SimplicialConfig(**fields)


def test_bad_config_json_and_assignment_name_the_field(tmp_path):
    tiny().config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(path.read_text().replace('"w1": 5', '"w1": 0'))
    with pytest.raises(ValueError, match="w1 must be an int >= 1 or None, got 0"):
        AutoConfig.from_pretrained(tmp_path)
    config = sh.SimplicialConfig()
    with pytest.raises(TypeError, match="w2"):
        config.w2 = "wide"
    config.w1 = 0  # a field alone is type-checked on assignment; validate() checks the whole config
    with pytest.raises(ValueError, match="w1 must be an int >= 1 or None, got 0"):
        config.validate()


def test_import_simplicial_attn_does_not_import_transformers():
    code = (
        "import sys, simplicial_attn\n"
        "print(sorted(m for m in sys.modules if m.startswith(('transformers', 'simplicial_attn.hf'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- padding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right", "holes"])
def test_padded_rows_equal_each_prompt_alone(side):
    """No padded token enters a window: a row's logits at its real tokens are those of its prompt alone,
    and a padded position repeats the logits of the last real token before it."""
    model = tiny()
    ids, mask = padded(PROMPTS, "left" if side == "left" else "right")
    if side == "holes":  # padding inside a row too, as after right-padded prompts are continued
        ids, mask = torch.cat([ids, ids[:, :3]], 1), torch.cat([mask, torch.ones_like(mask[:, :3])], 1)
    logits = model(ids, attention_mask=mask).logits
    for b in range(len(PROMPTS)):
        real = mask[b].nonzero()[:, 0]
        alone = model(ids[b : b + 1, real]).logits[0]
        torch.testing.assert_close(logits[b, real], alone, rtol=0, atol=1e-12)
        last = (mask[b].cumsum(0) - 1).clamp(min=0)
        torch.testing.assert_close(logits[b], alone[last], rtol=0, atol=1e-12)


# ---- generation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alone_greedy():
    """Each prompt's greedy continuation, generated alone (no padding), per logits form."""
    out = {}
    for form in ("trilinear", "determinant"):
        model = tiny(**(determinant() if form == "determinant" else {}))
        with torch.no_grad():
            out[form] = [
                model.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False)[0, len(p) :] for p in PROMPTS
            ]
    return out


@pytest.mark.parametrize("form", ["trilinear", "determinant"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_generation_equals_recomputation(side, form, alone_greedy):
    """Cached greedy decoding of a padded batch: token for token what one no-cache forward over the same
    tokens predicts (and its logits), and what each prompt gives alone. Rings of w + 3 slots wrap around."""
    model = tiny(**(determinant() if form == "determinant" else {}))
    ids, mask = padded(PROMPTS, side)
    cache = sh.SimplicialModelCache(model.config, max_chunk=4)  # prompts of 11 go in as 4 + 4 + 3
    out = model.generate(ids, attention_mask=mask, cache=cache, max_new_tokens=NEW, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)  # fmt: skip
    ring = cache.layers[1].cache
    assert (ring.c1, ring.c2) == (5 + 4 - 1, 3 + 4 - 1) and ring.lengths.tolist() == [len(p) + NEW - 1 for p in PROMPTS]
    new = out.sequences[:, ids.shape[1] :]
    full_mask = torch.cat([mask, torch.ones_like(new)], 1)
    recomputed = model(out.sequences, attention_mask=full_mask).logits[:, ids.shape[1] - 1 : -1]
    assert torch.equal(new, recomputed.argmax(-1))
    torch.testing.assert_close(torch.stack(out.logits, 1), recomputed.float(), rtol=0, atol=1e-5)
    for b in range(len(PROMPTS)):
        assert torch.equal(new[b], alone_greedy[form][b]), b


def test_generate_without_cache_gives_the_same_tokens():
    model = tiny()
    ids, mask = padded(PROMPTS, "left")
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(
        cached, model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, use_cache=False)
    )


@pytest.mark.parametrize("mode", [dict(do_sample=True, top_k=10, temperature=1.5), dict(num_beams=2)])
def test_sampling_and_beam_search_match_no_cache(mode):
    model = tiny()
    ids, mask = padded(PROMPTS, "right")
    torch.manual_seed(7)
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=8, **mode)
    torch.manual_seed(7)
    assert torch.equal(cached, model.generate(ids, attention_mask=mask, max_new_tokens=8, use_cache=False, **mode))


def test_generation_continues_from_a_returned_cache():
    model = tiny()
    ids, mask = padded(PROMPTS, "left")
    first = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert isinstance(first.cache, sh.SimplicialModelCache) and first.cache.get_seq_length() == ids.shape[1] + 4
    more_mask = torch.cat([mask, torch.ones_like(first.sequences[:, ids.shape[1] :])], 1)
    second = model.generate(
        first.sequences, attention_mask=more_mask, cache=first.cache, max_new_tokens=5, do_sample=False
    )
    assert torch.equal(second, model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False))


def test_cached_generation_feeds_each_token_once():
    """The speed-up's cause, counted instead of timed: with the cache every token goes through the layers
    once; recomputation runs the whole prefix again for every new token."""
    model = tiny()
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    prompt, n = torch.tensor([PROMPTS[2]]), 9
    model.generate(prompt, max_new_tokens=n, do_sample=False)
    assert sum(seen) == prompt.shape[1] + n - 1
    seen.clear()
    model.generate(prompt, max_new_tokens=n, do_sample=False, use_cache=False)
    assert sum(seen) == sum(prompt.shape[1] + t for t in range(n))


def test_bad_calls_say_what_is_wrong():
    model = tiny()
    ids, mask = padded(PROMPTS, "left")
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.arange(ids.shape[1])[None])
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="integers or bools"):
        model(ids, attention_mask=mask.double())
    with torch.no_grad(), pytest.raises(TypeError, match="SimplicialModelCache"):
        model(ids, cache=DynamicCache())
    with pytest.raises(RuntimeError, match="inference only"):
        model(ids, use_cache=True)
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).cache
        with pytest.raises(ValueError, match="holds 3 sequences"):
            model(ids[:2, -1:], cache=cache)
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, cache_implementation="static")


# ---- save / load, compile, Trainer ---------------------------------------------------------------


def test_save_and_reload_give_identical_logits(tmp_path):
    model = tiny(**determinant())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is sh.SimplicialForCausalLM and loaded.dtype == torch.float64
    fields = {k: v for k, v in loaded.config.to_dict().items() if k != "_name_or_path"}
    assert fields == {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # from_pretrained memory-maps the file, so a weight can start at an 8-byte offset, which sends the BLAS
    # matmul down another kernel (last-bit differences in float64); in fresh memory the logits are identical.
    with torch.no_grad():
        for p in loaded.parameters():
            p.data = p.data.clone()
    ids, mask = padded(PROMPTS, "left")
    assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_compiled_forward_and_backward_match_eager():
    model = tiny(num_hidden_layers=2).float().train()
    ids, mask = padded(PROMPTS, "right")
    labels = ids.masked_fill(mask == 0, -100)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(ids, attention_mask=mask, labels=labels)
    got.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want = model(ids, attention_mask=mask, labels=labels)
    want.loss.backward()
    torch.testing.assert_close(got.logits, want.logits)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    ids, mask = padded(PROMPTS, "left")
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        model.zero_grad()
        model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=1e-12)


def test_tied_embeddings_share_one_tensor():
    model = tiny(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert 0.5 < model.lm_head.weight.std().item() * 32**0.5 < 2  # unit-variance logits at the start


def test_one_trainer_step_updates_every_layer(tmp_path):
    model = tiny().float()
    ids, mask = padded(PROMPTS * 2, "right")
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": i.masked_fill(m == 0, -100)}
        for i, m in zip(ids, mask, strict=True)
    ]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=6, learning_rate=1e-2,
                             use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == [], unchanged
