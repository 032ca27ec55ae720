"""Data sets: what training gets (kdchain.data.splits: splits, batches, `load_data`), augmentation, image
helpers, and one module per source in kdchain/data/sources/ (digits, cifar10, imagefolder, marks).

To add a source: a module in kdchain/data/sources/ whose spec class (a kdchain.spec.data.Source) is decorated
with kdchain.spec.kinds.SOURCES.register and implements `load`, `shape` and `train_images`; nothing else changes.
"""

from kdchain.data.splits import (DataBundle, Split, batches, data_fingerprint, data_notes, files_fingerprint,
                                 input_info, labeled_only, load_data, missing_data, split_digest, stratified_split)

__all__ = ["DataBundle", "Split", "batches", "data_fingerprint", "data_notes", "files_fingerprint", "input_info",
           "labeled_only", "load_data", "missing_data", "split_digest", "stratified_split"]
