"""Real embedding-model architectures with random weights, built from the configs in gpu_models/.

A lent GPU machine has no network and no model weights, and only 64 MiB travel with the tree, so the
GPU benchmark (gpu_bench.py) cannot load all-MiniLM-L6-v2 or bge-base-en-v1.5 themselves. It builds
the same architectures instead: the shipped config.json, sentence-transformers module configs and the
uncased BERT WordPiece tokenizer, with weights drawn at run time from a fixed seed (transformers' own
initialisation). Throughput depends on the shapes, the token counts and the dtype, not on the weight
values, so the work per chunk is the real models' work. gpu_models/README.md cites every number.

`parameter_count` is the BertModel count from a config alone (the pooler included, as the published
checkpoints hold it); tests/payload/test_bench_models.py checks it against models built from the
shipped configs and against the real all-MiniLM-L6-v2 weights, so a wrong config cannot pass silently.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).parent / "gpu_models"
TOKENIZER = SHIPPED / "tokenizer.json"  # one file for both: the same 30,522-entry uncased WordPiece vocabulary
SEED = 20261130


@dataclass(frozen=True)
class BenchModel:
    name: str  # its folder in gpu_models/, named after the real model it imitates
    served_id: str  # the id the benchmark's gateway serves it under: never the real model's own
    dimension: int
    max_tokens: int  # what the gateway and sentence-transformers truncate at (sentence_bert_config.json)
    pooling: str  # mean | cls (1_Pooling/config.json)
    parameters: int  # the real checkpoint's parameter count (gpu_models/README.md)

    @property
    def shipped(self) -> Path:
        return SHIPPED / self.name


MODELS = (
    BenchModel("all-minilm-l6-v2", "minilm-l6-random", 384, 256, "mean", 22_713_216),
    BenchModel("bge-base-en-v1.5", "bge-base-random", 768, 512, "cls", 109_482_240),
)
BY_NAME = {m.name: m for m in MODELS}


def shipped_config(model: BenchModel) -> dict:
    return json.loads((model.shipped / "config.json").read_text())


def parameter_count(config: dict) -> int:
    """Parameters of a BertModel with its pooler, from the config's numbers alone."""
    h, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    embeddings = (vocab + config["max_position_embeddings"] + config["type_vocab_size"]) * h + 2 * h
    attention = 4 * (h * h + h) + 2 * h  # query, key, value, output; its LayerNorm
    feed_forward = (h * inner + inner) + (inner * h + h) + 2 * h  # up, down; its LayerNorm
    pooler = h * h + h
    return embeddings + config["num_hidden_layers"] * (attention + feed_forward) + pooler


def flops_per_sequence(config: dict, tokens: int) -> float:
    """Multiply-adds x 2 of one forward pass over `tokens` tokens (no padding): the dense layers and
    attention's two products; embeddings, norms and activations are left out (well under 1 %)."""
    h, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    dense = 2 * tokens * (4 * h * h + 2 * h * inner)
    attention = 2 * 2 * tokens * tokens * h
    return float(layers * (dense + attention))


def build(model: BenchModel, dest: Path, seed: int = SEED) -> Path:
    """A complete sentence-transformers model folder in dest: the shipped files, the tokenizer, and
    float32 safetensors weights drawn from `seed` on the CPU (the same weights on every machine)."""
    import torch
    from transformers import AutoConfig, AutoModel

    dest.mkdir(parents=True, exist_ok=True)
    for source in model.shipped.rglob("*"):
        if source.is_file():
            target = dest / source.relative_to(model.shipped)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    shutil.copyfile(TOKENIZER, dest / "tokenizer.json")
    torch.manual_seed(seed)
    network = AutoModel.from_config(AutoConfig.from_pretrained(dest), dtype=torch.float32)
    built = sum(p.numel() for p in network.parameters())
    if built != model.parameters:
        raise RuntimeError(f"{model.name}: the shipped config builds {built:,} parameters, not {model.parameters:,}")
    network.save_pretrained(dest)
    return dest
