"""Layer 0, the configuration: schema, field domains, resolvers and validation (no torch at import)."""

from nanodist.config.resolvers import register_resolvers, resolved_mesh, spread_ranks
from nanodist.config.schema import (
    MESH_DIMS,
    PP_SCHEDULES,
    Config,
    ConfigError,
    OptimConfig,
    register_configs,
)
from nanodist.config.validate import (
    padded_vocab_size,
    pipeline_microbatches,
    seq_len_of,
    validate,
    validate_relations,
    validate_vocab,
)

__all__ = [
    "MESH_DIMS", "PP_SCHEDULES", "Config", "ConfigError", "OptimConfig", "padded_vocab_size", "pipeline_microbatches",
    "register_configs", "register_resolvers", "resolved_mesh", "seq_len_of", "spread_ranks", "validate", "validate_relations", "validate_vocab",
]
