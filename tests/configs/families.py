"""Hand-written small configs, one or more per supported family, exercising each option.

Each is checked against transformers' meta-device count in ``test_params.py``.
"""

SMALL = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300)

MOE_QWEN2 = dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                 decoder_sparse_step=2, mlp_only_layers=[0])
MLA = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
           n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
           first_k_dense_replace=1)

FAMILY_CONFIGS: dict[str, dict] = {
    "llama": dict(SMALL, model_type="llama"),
    "llama-biases": dict(SMALL, model_type="llama", attention_bias=True, mlp_bias=True),
    "llama-mha-tied": dict(SMALL, model_type="llama", num_key_value_heads=4,
                           tie_word_embeddings=True),
    "llama-mqa-headdim": dict(SMALL, model_type="llama", num_key_value_heads=1, head_dim=24),
    "mistral": dict(SMALL, model_type="mistral", sliding_window=16),
    "mixtral": dict(SMALL, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen2": dict(SMALL, model_type="qwen2"),
    "qwen2-tied-sliding": dict(SMALL, model_type="qwen2", tie_word_embeddings=True,
                               use_sliding_window=True, sliding_window=8, max_window_layers=1),
    "qwen2_moe": dict(SMALL, model_type="qwen2_moe", **MOE_QWEN2),
    "qwen2_moe-nobias": dict(SMALL, model_type="qwen2_moe", qkv_bias=False, **MOE_QWEN2),
    "qwen3": dict(SMALL, model_type="qwen3", head_dim=32),
    "qwen3_moe": dict(SMALL, model_type="qwen3_moe", num_experts=4, moe_intermediate_size=32,
                      num_experts_per_tok=2, mlp_only_layers=[1]),
    "deepseek_v2-lite": dict(SMALL, model_type="deepseek_v2", q_lora_rank=None,
                             n_shared_experts=2, **MLA),
    "deepseek_v2-bias": dict(SMALL, model_type="deepseek_v2", q_lora_rank=24, n_shared_experts=1,
                             attention_bias=True, mlp_bias=True, **MLA),
    "deepseek_v3": dict(SMALL, model_type="deepseek_v3", q_lora_rank=24, n_shared_experts=1,
                        n_group=1, topk_group=1, **MLA),
    "gemma": dict(SMALL, model_type="gemma", head_dim=16),
    "gemma2": dict(SMALL, model_type="gemma2", head_dim=16, sliding_window=8),
    "gemma3_text": dict(SMALL, model_type="gemma3_text", head_dim=16, num_hidden_layers=7,
                        sliding_window=8),
    "phi3": dict(SMALL, model_type="phi3", pad_token_id=0),
    "gpt2": dict(model_type="gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300,
                 n_positions=128),
    "gpt2-inner": dict(model_type="gpt2", n_layer=2, n_embd=64, n_head=4, vocab_size=300,
                       n_positions=64, n_inner=100),
    "gpt_neox": dict(SMALL, model_type="gpt_neox", num_key_value_heads=4),
    "olmo2": dict(SMALL, model_type="olmo2"),
    "gpt_oss": dict(SMALL, model_type="gpt_oss", num_local_experts=4, num_experts_per_tok=2,
                    head_dim=16, sliding_window=8),
}
