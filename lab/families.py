"""Where the biases sit in architectures other than BERT's: role tables per model family.

``bitfit_utils`` names the biases of BERT-family encoders (the lab's models). This module
registers the module paths of other families with it (``bitfit_utils.register_roles``, once,
when this module is imported), so that ``apply_bitfit`` and the per-group table work on any
``transformers`` model. The lab's modules that handle models import it. A path inside a layer is looked up by what follows its
layer number (``"h.3.mlp.c_fc"`` -> ``"mlp.c_fc"``), a path outside the layers as a whole.

Pre-LN models (GPT-2, Llama, ModernBERT, ViT) normalise *before* each block: their
``attention_layernorm`` / ``output_layernorm`` are the norms in front of the attention / FFN.
"""

from __future__ import annotations

import bitfit_utils

#: Groups that BERT's encoder does not have (a bias that fits no known role gets one of
#: ``bitfit_utils.GENERIC_GROUPS``, named by the kind of module that owns it).
OTHER_GROUPS: tuple[str, ...] = (
    "embeddings_projection",  # ELECTRA, ALBERT (embedding -> hidden size), ViT (patches -> hidden size)
    "query_key_value",  # one fused projection: GPT-2's c_attn, ModernBERT's Wqkv
    "gate",  # the gate of a gated FFN (Llama, Qwen2, T5 v1.1)
    "cross_attention",  # an encoder-decoder's decoder attending to the encoder (T5)
    "relative_position",  # DeBERTa's relative-position projections and LayerNorm
    "final_layernorm",  # the norm after the last layer (pre-LN models: GPT-2, Llama, ViT, ...)
)

#: Module path -> role, per family (BERT's own table is ``bitfit_utils.BERT_ROLES``).
FAMILY_ROLES: dict[str, dict[str, str]] = {
    "ELECTRA, DeBERTa-v2/v3 (beyond BERT's paths)": {
        "embeddings_project": "embeddings_projection",
        "attention.self.query_proj": "query", "attention.self.key_proj": "key",
        "attention.self.value_proj": "value", "attention.self.pos_key_proj": "relative_position",
        "attention.self.pos_query_proj": "relative_position", "encoder.LayerNorm": "relative_position",
    },
    "DistilBERT": {
        "attention.q_lin": "query", "attention.k_lin": "key", "attention.v_lin": "value",
        "attention.out_lin": "attention_output", "sa_layer_norm": "attention_layernorm",
        "ffn.lin1": "intermediate", "ffn.lin2": "output", "output_layer_norm": "output_layernorm",
    },
    "ALBERT (one layer shared by all)": {
        "attention.query": "query", "attention.key": "key", "attention.value": "value",
        "attention.dense": "attention_output", "attention.LayerNorm": "attention_layernorm",
        "ffn": "intermediate", "ffn_output": "output", "full_layer_layer_norm": "output_layernorm",
        "encoder.embedding_hidden_mapping_in": "embeddings_projection", "pooler": "pooler",
    },
    "GPT-2 (Conv1D layers)": {
        "ln_1": "attention_layernorm", "attn.c_attn": "query_key_value", "attn.c_proj": "attention_output",
        "ln_2": "output_layernorm", "mlp.c_fc": "intermediate", "mlp.c_proj": "output", "ln_f": "final_layernorm",
    },
    "Llama, Qwen2 (gate_proj/up_proj: the two halves of a gated FFN)": {
        "self_attn.q_proj": "query", "self_attn.k_proj": "key", "self_attn.v_proj": "value",
        "self_attn.o_proj": "attention_output", "input_layernorm": "attention_layernorm",
        "mlp.gate_proj": "gate", "mlp.up_proj": "intermediate", "mlp.down_proj": "output",
        "post_attention_layernorm": "output_layernorm", "norm": "final_layernorm",
    },
    "ModernBERT (Wi: FFN input and gate in one matrix)": {
        "attn_norm": "attention_layernorm", "attn.Wqkv": "query_key_value", "attn.Wo": "attention_output",
        "mlp_norm": "output_layernorm", "mlp.Wi": "intermediate", "mlp.Wo": "output",
        "embeddings.norm": "embeddings_layernorm", "final_norm": "final_layernorm",
    },
    "T5 (encoder and decoder)": {
        "SelfAttention.q": "query", "SelfAttention.k": "key", "SelfAttention.v": "value",
        "SelfAttention.o": "attention_output", "EncDecAttention.q": "cross_attention",
        "EncDecAttention.k": "cross_attention", "EncDecAttention.v": "cross_attention",
        "EncDecAttention.o": "cross_attention", "DenseReluDense.wi": "intermediate",
        "DenseReluDense.wi_0": "gate", "DenseReluDense.wi_1": "intermediate", "DenseReluDense.wo": "output",
        "encoder.final_layer_norm": "final_layernorm", "decoder.final_layer_norm": "final_layernorm",
    },
    "ViT": {
        "attention.q_proj": "query", "attention.k_proj": "key", "attention.v_proj": "value",
        "attention.o_proj": "attention_output", "layernorm_before": "attention_layernorm",
        "mlp.fc1": "intermediate", "mlp.fc2": "output", "layernorm_after": "output_layernorm",
        "embeddings.patch_embeddings.projection": "embeddings_projection", "layernorm": "final_layernorm",
    },
}


def _all_roles() -> dict[str, str]:
    """Every family's table in one mapping; a path listed twice is an error here, not a silent override."""
    merged: dict[str, str] = {}
    for family, table in FAMILY_ROLES.items():
        if twice := sorted(set(table) & set(merged)):
            raise ValueError(f"{family}: module path(s) {twice} are listed by another family too.")
        merged.update(table)
    return merged


def register() -> None:
    """Register every family's roles with ``bitfit_utils`` (importing this module does it; again is a no-op)."""
    bitfit_utils.register_roles(_all_roles(), OTHER_GROUPS)


register()
