r"""A torchtitan model spec: a Llama-style decoder with 2-simplicial layers, trained by torchtitan's trainer.

    pip install 'simplicial-attn[titan]'                   # torchtitan 0.2.2 (see below)
    torchrun --nproc_per_node 8 -m torchtitan.train \
        --job.config_file python/simplicial_attn/parallel/titan/simplicial_debug.toml \
        --parallelism.data_parallel_shard_degree 2 --parallelism.context_parallel_degree 2 \
        --parallelism.tensor_parallel_degree 2

The config file's `[experimental] custom_import = "simplicial_attn.parallel.titan"` makes the trainer
import this module, which registers the train spec "simplicial" (`[model] name`): the model
(model.py; flavors in `FLAVORS`), its parallelize function (parallelize.py: torchtitan's FSDP / TP / CP
settings applied through `simplicial_attn.parallel`), a byte-level tokenizer and the standard
library's text as data (data.py: nothing to download), and torchtitan's own optimizer, learning-rate
schedule and cross-entropy loss.

torchtitan 0.2.2 is the release whose dependencies install beside this project's pinned ones
(0.3.0 needs datasets < 4.8, hence huggingface-hub < 2, against transformers' 2.4 here), and it
runs with torch 2.14.1. Its trainer needs an accelerator: with none it picks "cuda" and stops at
`torch.cuda.set_device` ("Found no NVIDIA driver on your system"). tests/test_titan.py runs this
spec on the CPU with gloo by pointing torchtitan's device at the CPU before the trainer starts.
"""

import dataclasses

from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.loss import build_cross_entropy_loss
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.components.tokenizer import BaseTokenizer
from torchtitan.protocols.model import BaseModelArgs, ModelProtocol
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

from .data import ByteStream, stdlib_text
from .model import SimplicialTitanArgs, SimplicialTitanModel
from .parallelize import parallelize_simplicial

__all__ = ["FLAVORS", "NAME", "TitanArgs", "TitanModel", "parallelize_simplicial", "train_spec"]

NAME = "simplicial"


@dataclasses.dataclass
class TitanArgs(SimplicialTitanArgs, BaseModelArgs):
    """SimplicialTitanArgs as torchtitan's model arguments."""


class TitanModel(SimplicialTitanModel, ModelProtocol):
    """SimplicialTitanModel as torchtitan's model (the ModelProtocol base)."""


FLAVORS = {
    "debugmodel": TitanArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, w1=64, w2=16),
    "small": TitanArgs(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, w1=256, w2=32),
    "1B": TitanArgs(dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, simplicial_kv_heads=4, w1=512, w2=32),
}


class ByteTokenizer(BaseTokenizer):
    """One token per byte (vocabulary 256): the data needs no tokenizer files."""

    def encode(self, text, *args, **kwargs):
        return list(text.encode("utf-8"))

    def decode(self, ids, *args, **kwargs):
        return bytes(ids).decode("utf-8", errors="replace")

    def get_vocab_size(self):
        return 256


def build_tokenizer(job_config):
    return ByteTokenizer()


class StdlibDataLoader(ByteStream, BaseDataLoader):
    """The standard library's training text (data.py) as torchtitan's data loader."""


def build_dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite=True):
    training = job_config.training
    seed = 0 if job_config.debug.seed is None else job_config.debug.seed
    return StdlibDataLoader(stdlib_text("train"), training.local_batch_size, training.seq_len, dp_rank, seed)


def train_spec():
    return TrainSpec(
        model_cls=TitanModel,
        model_args=FLAVORS,
        parallelize_fn=parallelize_simplicial,
        pipelining_fn=None,
        build_optimizers_fn=build_optimizers,
        build_lr_schedulers_fn=build_lr_schedulers,
        build_dataloader_fn=build_dataloader,
        build_tokenizer_fn=build_tokenizer,
        build_loss_fn=build_cross_entropy_loss,
    )


register_train_spec(NAME, train_spec())
