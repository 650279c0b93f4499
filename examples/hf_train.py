"""A Hugging Face SimplicialForCausalLM trained on the Python standard library's source, end to end.

The character-level task of train_code.py (its data functions, imported: the stdlib's *.py files,
split by file, one byte per token), with the transformers stack around it:

    AutoConfig.for_model("simplicial", ...)  ->  AutoModelForCausalLM.from_config  (layers AAAS)
    transformers.Trainer                     ->  a few hundred steps on padded batches
    save_pretrained (safetensors)            ->  AutoModelForCausalLM.from_pretrained (identical logits)
    the reloaded model                       ->  top-5 next characters after a prompt, and generate()
                                                 with the rolling caches

Each training row is one segment of up to seq_len + 1 characters from one file; a file shorter
than that gives a shorter row, padded on the right (attention_mask 0, labels -100), and no
padded position enters any window.

    python examples/hf_train.py                      # the documented run (a few minutes on 2 cores)
    python examples/hf_train.py --tiny --steps 3     # smoke test
"""

import argparse
import math
import pathlib
import sys
import tempfile
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

import simplicial_attn.hf  # noqa: F401  (registers model_type "simplicial" with the Auto classes)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_code import encode, fixed_packed_batches, random_packed_batch, stdlib_sources  # noqa: E402

PAD = 0  # the NUL byte: absent from the sources, so free to mark padding


def padded_rows(x, y, cu, width):
    """A packed batch of train_code (inputs x, next characters y, cu_seqlens) -> one dict per segment:
    input_ids, attention_mask, labels [width], the segment right-padded (labels -100 there)."""
    rows = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        segment = torch.cat([x[s:e], y[e - 1 : e]])
        ids = torch.full((width,), PAD)
        ids[: len(segment)] = segment
        mask = (torch.arange(width) < len(segment)).long()
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return rows


class Segments(torch.utils.data.IterableDataset):
    """An endless stream of training rows (random segments of the training files), seeded."""

    def __init__(self, files, seq_len, seed):
        self.files, self.seq_len, self.seed = files, seq_len, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield from padded_rows(*random_packed_batch(self.files, 64, self.seq_len, gen), self.seq_len + 1)


def build_config(args):
    return AutoConfig.for_model(
        "simplicial",
        vocab_size=256,
        hidden_size=args.dim,
        intermediate_size=args.mlp,
        num_hidden_layers=args.depth,
        num_attention_heads=args.heads,
        simplicial_every=args.simplicial_every,
        simplicial_num_key_value_heads=args.simplicial_kv_heads,
        w1=args.w1,
        w2=args.w2,
        max_position_embeddings=4096,
        simplicial_backend=args.backend,
        pad_token_id=PAD,
    )


def stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


@torch.no_grad()
def validation_loss(model, batches):
    """Mean next-character cross-entropy (nats) over the validation rows."""
    model.eval()
    total = count = 0.0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * n
        count += n
    return total / count


def train(model, train_files, args, workdir):
    targs = TrainingArguments(
        output_dir=str(workdir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.steps // 20),
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=targs, train_dataset=Segments(train_files, args.seq_len, args.seed)).train()


def top5(model, prompt_ids):
    """[(character, probability)] of the five most likely characters after the prompt."""
    with torch.no_grad():
        probs = torch.softmax(model(prompt_ids).logits[0, -1].float(), -1)
    top = probs.topk(5)
    return [(bytes([i]).decode("latin-1"), p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--mlp", type=int, default=344, help="SwiGLU width (about 8/3 of --dim)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--simplicial-every", type=int, default=4, help="every k-th layer is 2-simplicial")
    p.add_argument("--simplicial-kv-heads", type=int, default=2)
    p.add_argument("--w1", type=int, default=64)
    p.add_argument("--w2", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-rows", type=int, default=64)
    p.add_argument("--max-files", type=int, default=None, help="read only the first files (smoke tests)")
    p.add_argument("--backend", default="auto", help="backend of the 2-simplicial op")
    p.add_argument(
        "--save-dir", type=pathlib.Path, default=None, help="keep the saved model here (default: a temp dir)"
    )
    p.add_argument("--prompt", default="def read_config(path):\n    ")
    p.add_argument("--new-tokens", type=int, default=300, help="characters to generate after the prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--tiny", action="store_true", help="tiny sizes for a smoke test")
    args = p.parse_args(argv)
    if args.tiny:
        args.dim, args.mlp, args.depth, args.heads, args.simplicial_every, args.simplicial_kv_heads = 16, 32, 2, 2, 2, 1
        args.w1, args.w2, args.seq_len, args.batch, args.eval_rows, args.new_tokens = 8, 4, 24, 4, 8, 24
        args.max_files = args.max_files or 12
    return args


def main(argv=None):
    args = parse_args(argv)
    split = stdlib_sources(args.max_files)
    train_files, valid_files = encode(split["train"]), encode(split["valid"])
    valid = [
        stack(padded_rows(*b, args.seq_len + 1))
        for b in fixed_packed_batches(valid_files, args.eval_rows, args.seq_len, args.batch)
    ]
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(build_config(args))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{type(model).__name__}: layers {model.config.layer_kinds} (A: SDPA, S: 2-simplicial), {params:,} parameters"
    )
    print(f"data: {len(train_files)} training files, {len(valid_files)} validation files of the stdlib")
    with tempfile.TemporaryDirectory() as tmp:
        out = train(model, train_files, args, pathlib.Path(tmp) / "trainer")
        loss = validation_loss(model, valid)
        print(f"trained {out.global_step} steps in {out.metrics['train_runtime']:.0f} s; validation loss {loss:.4f} "
              f"nats/char ({loss / math.log(2):.3f} bits/char)")  # fmt: skip
        save_dir = args.save_dir or pathlib.Path(tmp) / "model"
        model.save_pretrained(save_dir)
        loaded = AutoModelForCausalLM.from_pretrained(save_dir).eval()
        print(f"saved to {save_dir} ({', '.join(sorted(f.name for f in save_dir.iterdir()))}); reloaded as "
              f"{type(loaded).__name__} with AutoModelForCausalLM")  # fmt: skip
        with torch.no_grad():
            same = all(torch.equal(model(**b).logits, loaded(**b).logits) for b in valid)
        print(f"reloaded logits identical to the trained model's: {same}")
    prompt = torch.tensor([list(args.prompt.encode())])
    probs = top5(loaded, prompt)
    print(f"prompt {args.prompt!r}\ntop-5 next characters: " + ", ".join(f"{c!r}: {p:.3f}" for c, p in probs))
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    tokens = loaded.generate(prompt, max_new_tokens=args.new_tokens, do_sample=True, temperature=args.temperature,
                             top_k=args.top_k, pad_token_id=PAD)  # fmt: skip
    seconds = time.perf_counter() - start
    text = bytes(tokens[0].tolist()).decode("utf-8", errors="replace")
    print(f"completion ({args.new_tokens} characters, temperature {args.temperature}, top_k {args.top_k}, "
          f"{args.new_tokens / seconds:.0f} characters/s with the rolling caches):\n{text}")  # fmt: skip
    return {"steps": out.global_step, "train_loss": out.training_loss, "valid_loss": loss, "reload_identical": same,
            "top5": probs, "completion": text, "parameters": params}  # fmt: skip


if __name__ == "__main__":
    main()
