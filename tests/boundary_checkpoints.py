"""Tiny random GLiNER2.5 ("boundary") checkpoints built and saved by ``gliner2`` 2.1.0 itself.

Variants set the ``boundary_head`` flags that shape the saved weights and the classification
path: ``released`` (what exports of fastino/gliner2.5-*-v1 require: shared pool, span content,
abstention, count, records, relations), ``default`` (the library's defaults: per-query proposals),
``full_per_query`` (every optional module of the per-query path), ``per_query_plain`` (its other
switches), ``hot`` (``released``
with classification temperature 0.5, without inside evidence and span content) and ``no_dropout`` (head dropout 0: classifier keys
``.0``/``.2`` instead of ``.0``/``.3``), ``full`` (every optional module of the shared pool path,
temperatures (records' too), adaptive threshold, ``nested`` overlaps) and ``longest``. Head weights are redrawn N(0, 1/fan_in) so that class
decisions are well separated.
"""
import shutil
import tempfile
from pathlib import Path

import torch
from checkpoints import _bert_tokenizer, _encoder_config, _init_weights

TINY_HEAD = dict(boundary_dim=16, pair_dim=16, multihead_pair_compat_heads=4, content_dim=8, record_dim=16,
                 record_instance_queries=4)
RELEASED = dict(candidate_pool="shared", enable_span_content=True, content_soft_max_pool=False,
                candidate_attention_layers=0, query_attention_layers=0, use_inside_evidence=True,
                enable_abstention=True, enable_count_head=True, enable_records=True, enable_relations=True,
                overlap_policy="flat", pool_boundary_top_k=16, pool_size=48, min_pool_per_query=4)
CLASS_LOGIT_SCALE = 6.0
VARIANTS = {
    "released": RELEASED,
    "default": {},
    "hot": dict(RELEASED, classification_temperature=0.5, use_inside_evidence=False, enable_span_content=False),
    "no_dropout": dict(RELEASED, dropout=0.0),
    # every optional module of the shared path; temperatures, adaptive threshold, nested overlaps
    "full": dict(RELEASED, content_soft_max_pool=True, boundary_attention_layers=1, boundary_attention_heads=4,
                 boundary_attention_window=4, boundary_refinement_layers=2, candidate_attention_layers=1,
                 query_attention_layers=1, candidate_attention_heads=4, pair_temperature=0.7,
                 classification_temperature=0.5, adaptive_threshold=True, overlap_policy="nested", record_temperature=1.5,
                 directional_relation_states=True, relation_biaffine_content=True, relation_temperature=1.5,
                 relation_heads_per_type=8, relation_tails_per_type=8, relation_pair_cap=24),
    "longest": dict(RELEASED, overlap_policy="longest"),
    # per-query proposals with every optional module of that path (rotary endpoints, query-conditioned
    # inside weight, endpoint-difference features, a length-adaptive budget, streamed end blocks)
    "full_per_query": dict(RELEASED, candidate_pool="per_query", enable_rotary_endpoints=True, content_soft_max_pool=True,
                           query_conditioned_inside_weight=True, endpoint_difference_features=True,
                           boundary_top_k_alpha=0.5, boundary_top_k_max=32, start_top_k=8, end_top_k=8, ends_per_start=4,
                           starts_per_end=4, candidate_budget=40, export_mode="streaming", end_block_size=8,
                           pair_temperature=0.7, adaptive_threshold=True, overlap_policy="nested",
                           directional_relation_states=True, relation_heads_per_type=8, relation_tails_per_type=8,
                           relation_pair_cap=24),
    # the per-query path with its other switches off or minimal: one direction, no endpoint compatibility
    # nor inside evidence, one compatibility head, endpoint differences, boundary attention
    "per_query_plain": dict(RELEASED, candidate_pool="per_query", bidirectional_proposals=False,
                            reranker_endpoint_compat=False, use_inside_evidence=False, multihead_pair_compat_heads=1,
                            endpoint_difference_features=True, boundary_attention_layers=1, boundary_attention_heads=4,
                            start_top_k=12, ends_per_start=6, candidate_budget=64),
}


def build_boundary_checkpoint(path: "str | Path", variant: str = "released", seed: int = 0,
                              null_bias: "float | None" = None, relation_bias: "float | None" = None) -> Path:
    """Save a tiny BERT-encoder boundary checkpoint of ``variant`` to ``path`` (the reference's files plus
    ``vocab.txt``; ``null_bias``, ``relation_bias``: the abstention head's and the relation MLP's output bias) and check that ``AutoExtractor`` loads it as a ``BoundaryExtractor``."""
    from gliner2 import AutoExtractor, ExtractorConfig
    from gliner2.models.boundary.engine import BoundaryExtractor

    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _bert_tokenizer(Path(tmp))
        encoder_config = _encoder_config("bert", len(tokenizer), 32, 2, 2)
        config = ExtractorConfig(model_name=f"tiny-boundary-{variant}", architecture="boundary",
                                 token_pooling="first", boundary_head={**TINY_HEAD, **VARIANTS[variant]})
        model = BoundaryExtractor(config, encoder_config=encoder_config, tokenizer=tokenizer).eval()
        _init_weights(model, generator, encoder_config.initializer_range)
        with torch.no_grad():  # class logits with std ~2: decisions well away from thresholds
            model.classifier[-1].weight.mul_(CLASS_LOGIT_SCALE)
            head = model.boundary_head  # as the reference's builder: abstention fires, but not always
            head.null_projection.bias.fill_(-1.5 if null_bias is None else null_bias)
            head.count_head.bias.fill_(0.5)
            if relation_bias is not None:
                model.relation_scorer.mlp[-1].bias.fill_(relation_bias)
        model.save_pretrained(str(path))
        shutil.copy(Path(tmp) / "vocab.txt", path / "vocab.txt")
    loaded = AutoExtractor.from_pretrained(str(path))
    assert type(loaded).__name__ == "BoundaryExtractor", type(loaded)
    return path
