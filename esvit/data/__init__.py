"""Data: sources (raw datasets), shards (writer + verifier), pipeline (WebDataset readers)."""

from esvit.data import transfer  # noqa: F401  registers the 18 transfer sets as sources
from esvit.data.shards import ShardConfig, ShardError, verify_shards, write_shards
from esvit.data.sources import SOURCES, Record, Source, SourceError, get_source

__all__ = [
    "SOURCES",
    "Record",
    "Source",
    "SourceError",
    "get_source",
    "ShardError",
    "ShardConfig",
    "verify_shards",
    "write_shards",
]
