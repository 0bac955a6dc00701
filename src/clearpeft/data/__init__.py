"""Text-classification data: the registered benchmarks (SST-5, BANKING77) and local csv/tsv/jsonl files.

This package knows nothing of models; tokenization and batching live in `clearpeft.data.batching`.
"""

from .loaders import REGISTERED, DataBundle, Split, from_records, load_data

__all__ = ["REGISTERED", "DataBundle", "Split", "from_records", "load_data"]
