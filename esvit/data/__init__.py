"""Data: sources (raw datasets), shards (writer + verifier), pipeline (WebDataset readers)."""

from esvit.data.sources import SOURCES, Record, Source, SourceError, get_source
from esvit.data.shards import ShardError, ShardConfig, verify_shards, write_shards
from esvit.data import transfer  # noqa: F401  registers the 18 transfer sets as sources

__all__ = [
    "SOURCES", "Record", "Source", "SourceError", "get_source",
    "ShardError", "ShardConfig", "verify_shards", "write_shards",
]  # fmt: skip
