"""Data sets: the registry (`load_data`, `batches`, shapes, fingerprints) and one module per source.

To add a source: a module that decorates its loader with `kdchain.data.registry.register(kind, shape=...)`, a
spec class in `kdchain/spec/data.py`, and an import line below.
"""

from kdchain.data.registry import (DataBundle, Split, batches, data_fingerprint, data_notes, files_fingerprint,
                                   input_info, load_data, missing_data, stratified_split, LOADERS)

# the sources register themselves on import
from kdchain.data import cifar10, digits, folder, marks  # noqa: E402,F401

__all__ = ["DataBundle", "Split", "batches", "data_fingerprint", "data_notes", "files_fingerprint", "input_info", "load_data",
           "missing_data", "stratified_split", "LOADERS"]
