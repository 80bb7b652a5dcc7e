"""layout: tensor names -> roles (module name, type key, layer index, embedding or head, tower)."""

from __future__ import annotations

import functools
import re

_ASCII_DIGITS = re.compile(r"([0-9]+)")

# Module names (last component) that hold token embeddings or the output head in common families.
EMBEDDING_LEAVES = {"embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in", "embeddings"}
HEAD_LEAVES = {"lm_head", "embed_out", "output"}


# A multimodal checkpoint's towers other than the language model, by the first word of a module in front of
# the layer index: Gemma-3/LLaVA/Mistral-3 `vision_tower.…`, Llama-4 `vision_model.…`, Qwen2.5-VL `visual.…`;
# audio encoders `audio_tower.…` (config.json: the tower's `vision_config` / `audio_config`).
TOWER_WORDS = {"vision": ("vision", "visual"), "audio": ("audio",)}
LANGUAGE = "language"
TOWERS = (LANGUAGE, *TOWER_WORDS)


def tower(name: str) -> str:
    """Which tower of a multimodal model NAME belongs to: 'vision', 'audio' or 'language' (the text model,
    its embeddings and head, and the projectors between the towers; every name of a text-only model)."""
    for part in name.split("."):
        if part.isdigit():
            break
        for kind, words in TOWER_WORDS.items():
            if part.startswith(words):
                return kind
    return LANGUAGE


def module_name(tensor_name: str) -> str:
    """`model.layers.0.mlp.down_proj.weight` -> `model.layers.0.mlp.down_proj` (module names, as Spectrum)."""
    return tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def type_key(name: str) -> str:
    """The reference's type: the dotted name after its first all-digit component, else the whole name."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isascii() and part.isdigit():  # only ASCII digits count (int() refuses '²')
            return ".".join(parts[i + 1 :]) or name
    return name


def layer_index(name: str) -> int | None:
    for part in name.split("."):
        if part.isascii() and part.isdigit():
            return int(part)
    return None


@functools.lru_cache(maxsize=1 << 18)
def natural_key(name: str) -> tuple:
    """Sort `layers.2` before `layers.10`. Cached: the outputs of a scan sort the same names many times.

    The capturing split puts the digit runs at the odd indices: those become ints, the text between stays
    Only ASCII digits count, as in ``layer_index``."""
    parts = _ASCII_DIGITS.split(name)
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


def embedding_role(name: str, shape: tuple[int, ...], config: dict) -> str | None:
    """'embedding' or 'head' for the token embedding / output head, judged by name and vocab size."""
    leaf = module_name(name).rsplit(".", 1)[-1]
    if layer_index(name) is not None or len(shape) != 2:
        return None
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if leaf in HEAD_LEAVES and (vocab is None or vocab in shape):
        return "head"
    if leaf in EMBEDDING_LEAVES and (vocab is None or vocab in shape):
        return "embedding"
    return None
