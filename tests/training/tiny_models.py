"""Tiny random models of the MoE, multimodal and dense families, built and saved by transformers itself
(configs of a few KB, no downloads), in the checkpoint layout (``save_pretrained``) and transformers 5's own
(``save_original_format=False``)."""

from __future__ import annotations

from pathlib import Path

TEXT = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    vocab_size=64,
    max_position_embeddings=64,
)
MOE = dict(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=8)
VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    num_channels=3,
)

# name -> (config class, model class, config kwargs)
ARCHS: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(MOE, intermediate_size=8)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(MOE, shared_expert_intermediate_size=16)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(MOE)),
    "qwen3_next": (
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        dict(
            MOE,
            shared_expert_intermediate_size=16,
            layer_types=["linear_attention", "full_attention"] * 2,
            linear_num_value_heads=2,
            linear_num_key_heads=1,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
        ),
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        dict(
            MOE,
            num_hidden_layers=5,
            first_k_dense_replace=1,
            n_routed_experts=4,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            kv_lora_rank=8,
            q_lora_rank=8,
            qk_rope_head_dim=4,
            qk_nope_head_dim=4,
            v_head_dim=8,
            head_dim=4,
        ),
    ),
    "dbrx": (
        "DbrxConfig",
        "DbrxForCausalLM",
        dict(
            d_model=16,
            n_heads=2,
            n_layers=4,
            max_seq_len=64,
            vocab_size=64,
            attn_config={"kv_n_heads": 1, "rope_theta": 10000.0},
            ffn_config={"ffn_hidden_size": 8, "moe_num_experts": 4, "moe_top_k": 2},
        ),
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(MOE, intermediate_size=8)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(MOE, intermediate_size=8)),
    "jetmoe": ("JetMoeConfig", "JetMoeForCausalLM", dict(MOE, num_local_experts=4, kv_channels=8, intermediate_size=8)),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(MOE, intermediate_size=8)),
    "jamba": (
        "JambaConfig",
        "JambaForCausalLM",
        dict(
            MOE,
            intermediate_size=8,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=1,
            expert_layer_offset=0,
            mamba_d_state=4,
            mamba_d_conv=2,
            mamba_expand=2,
            use_mamba_kernels=False,
        ),
    ),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(MOE, intermediate_size=8, layer_types=None)),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM", dict(MOE, intermediate_size=8, intermediate_size_mlp=32)),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM", dict(MOE, n_routed_experts=4, first_k_dense_replace=0)),
    "minimax": ("MiniMaxConfig", "MiniMaxForCausalLM", dict(MOE, intermediate_size=8, layer_types=None)),
    "longcat_flash": (
        "LongcatFlashConfig",
        "LongcatFlashForCausalLM",
        dict(
            MOE,
            num_hidden_layers=8,  # 2 x num_layers: 4 layers
            n_routed_experts=4,
            expert_ffn_hidden_size=8,
            ffn_hidden_size=32,
            q_lora_rank=8,
            kv_lora_rank=8,
            qk_nope_head_dim=4,
            qk_rope_head_dim=4,
            v_head_dim=8,
            zero_expert_num=2,
        ),
    ),
    "llama4": ("Llama4Config", "Llama4ForConditionalGeneration", {}),
    "gemma3": ("Gemma3Config", "Gemma3ForConditionalGeneration", {}),
    "mistral3": ("Mistral3Config", "Mistral3ForConditionalGeneration", {}),
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration", {}),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", {}),
}
MULTIMODAL = {"llama4", "gemma3", "mistral3", "llava", "qwen2_5_vl"}


def make_config(arch: str):
    import transformers

    cfg_name, _, extra = ARCHS[arch]
    cls = getattr(transformers, cfg_name)
    if arch in MULTIMODAL:
        text_cls = {
            "llama4": "Llama4TextConfig",
            "gemma3": "Gemma3TextConfig",
            "mistral3": "MistralConfig",
            "llava": "LlamaConfig",
            "qwen2_5_vl": "Qwen2_5_VLTextConfig",
        }[arch]
        text = dict(TEXT)
        if arch == "llama4":
            text.update(MOE, intermediate_size=8, intermediate_size_mlp=32, interleave_moe_layer_step=1)
        vision = dict(VISION)
        if arch == "qwen2_5_vl":
            vision = dict(
                depth=1,
                hidden_size=16,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=16,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                fullatt_block_indexes=[0],
            )
        if arch == "llama4":
            vision.update(vision_output_dim=16, projector_input_dim=16, projector_output_dim=16)
        if arch == "gemma3":
            vision["image_size"] = 56
        return cls(
            text_config=getattr(transformers, text_cls)(**text).to_dict(),
            vision_config=vision,
            **({"mm_tokens_per_image": 4} if arch == "gemma3" else {}),
        )
    return cls(**{**TEXT, **extra})


def build(arch: str, root: Path) -> tuple[Path, Path]:
    """ROOT/ARCH (checkpoint layout) and ROOT/ARCH-v5 (transformers 5 layout), built once."""
    import torch
    import transformers

    plain, v5 = root / arch, root / f"{arch}-v5"
    if (plain / "config.json").is_file() and (v5 / "config.json").is_file():
        return plain, v5
    torch.manual_seed(0)
    model = getattr(transformers, ARCHS[arch][1])(make_config(arch))
    model.save_pretrained(plain)
    model.save_pretrained(v5, save_original_format=False)
    return plain, v5
