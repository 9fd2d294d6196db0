"""Datasets: tfds builders for the built-in sets, sources, splits, subsets, labels and the batch
stream.

    sources.py   preparing the built-in datasets, opening any tfds dataset offline, lazy columns
    splits.py    Split, nested seeded subsets, label modes, pseudo-label files, [-1, 1] scaling
    convention.py  the image convention (float NHWC in [-1, 1]) and its check
    files.py     reading dataset files from users or the internet: size caps, DataFileError
    stream.py    the resumable, sharded batch stream (batch t a pure function of (seed, t))
    builders.py  the built-in datasets and how their splits are made
(The data config is checked by `config_checks.data_config`.)
"""

from diffgen_jax.data.convention import CONVENTION, check_images, check_pixels
from diffgen_jax.data.files import MAX_NUM_CLASSES, DataFileError
from diffgen_jax.data.sources import (
    DATASETS,
    DEFAULT_DATA_DIR,
    LazyColumn,
    is_prepared,
    prepare,
    resolve_data_dir,
    tfds_name,
    train_size,
)
from diffgen_jax.data.splits import (
    LABEL_MODES,
    SPLITS,
    SUBSET_SIDES,
    SUBSET_STREAMS,
    Split,
    evaluation_subset,
    first_images,
    load_split,
    read_pseudo_labels,
    seeded_rows,
    subset_order,
    subset_rows,
    to_pixels,
    to_unit_range,
)
from diffgen_jax.data.stream import (
    BatchIterator,
    batch_at,
    epoch_permutation,
    flip_mask,
    host_batch,
    process_rows,
    stream_indices,
)

__all__ = [
    "DATASETS", "DEFAULT_DATA_DIR", "LABEL_MODES", "MAX_NUM_CLASSES", "SPLITS", "BatchIterator",
    "DataFileError", "LazyColumn", "SUBSET_STREAMS", "Split", "batch_at", "epoch_permutation",
    "evaluation_subset", "first_images", "flip_mask",
    "host_batch", "to_pixels", "to_unit_range", "train_size", "CONVENTION", "check_images",
    "check_pixels",
    "is_prepared", "load_split", "prepare", "process_rows", "read_pseudo_labels", "resolve_data_dir",
    "seeded_rows", "stream_indices", "subset_order", "subset_rows", "SUBSET_SIDES", "tfds_name",
]
