"""The ~100M-parameter random Qwen2 shape shared by the LM-step and generation benchmarks."""
QWEN2_100M = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                  max_position_embeddings=4096, tie_word_embeddings=True)
