"""A training-set source that records every read, for the tests of sources read where they live
(y*, nearest neighbours, the copy test): they check which rows each process read, and how many
at once. Importable in tests and in `multiprocess.run` bodies (tests/ is on their path).

    source = Counted(array)          # len(), .shape and indexing as the array's
    ...                              # a function reads it
    np.concatenate(source.reads)     # every row index read, one entry per read
"""

import numpy as np


class Counted:
  """A source over `array` that records the row indices of every read (one entry per read)."""

  def __init__(self, array):
    self.array, self.shape, self.reads = array, array.shape, []

  def __len__(self):
    return len(self.array)

  def __getitem__(self, index):
    self.reads.append(np.arange(len(self.array))[index])
    return self.array[index]
