"""Datasets: tfds builders for the built-in sets, splits, subsets, labels and the batch stream.

See pipeline.py for the conventions (splits, nested subsets, the pure (seed, step) batch stream)
and builders.py for the built-in datasets and how their splits are made.
"""

from diffgen_jax.data.convention import CONVENTION, check_images, check_pixels
from diffgen_jax.data.pipeline import (
    DATASETS,
    DEFAULT_DATA_DIR,
    LABEL_MODES,
    SPLITS,
    BatchIterator,
    LazyColumn,
    Split,
    addressable_rows,
    batch_at,
    epoch_permutation,
    first_images,
    flip_mask,
    host_batch,
    is_prepared,
    load_split,
    prepare,
    process_rows,
    read_pseudo_labels,
    resolve_data_dir,
    stream_indices,
    subset_order,
    subset_rows,
    tfds_name,
    to_unit_range,
    validate_config,
)

__all__ = [
    "DATASETS", "DEFAULT_DATA_DIR", "LABEL_MODES", "SPLITS", "BatchIterator", "LazyColumn",
    "Split", "addressable_rows", "batch_at", "epoch_permutation", "first_images", "flip_mask",
    "host_batch", "to_unit_range", "CONVENTION", "check_images", "check_pixels",
    "is_prepared", "load_split", "prepare", "process_rows", "read_pseudo_labels", "resolve_data_dir", "stream_indices",
    "subset_order", "subset_rows", "tfds_name", "validate_config",
]
