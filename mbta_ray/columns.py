"""Lookups over string columns without a Python object per row.

pandas answers ``Index.get_indexer`` on arrow-backed strings by converting both sides to object
arrays; over the tens of millions of example rows the ETL builds, that conversion was most of the
lookup's time. ``pyarrow.compute.index_in`` does the same lookup in Arrow's own hash table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def as_arrow_strings(values) -> pa.Array | pa.ChunkedArray:
    """``values`` (a Series, Index, array or list of strings; missing values allowed) as Arrow strings."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == pa.string() else values.cast(pa.string())
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.astype("string").array  # arrow-backed: no copy when it already is
    elif not isinstance(values, pd.api.extensions.ExtensionArray):
        values = pd.array(np.asarray(values, dtype=object), dtype="string")
    return pa.array(values, type=pa.string())


def codes_in(index: pd.Index, values) -> np.ndarray:
    """Position of each of ``values`` in ``index`` (unique strings), -1 where absent: what
    ``index.get_indexer(values)`` returns (a missing value finds a missing value in the index too)."""
    if len(values) == 0:
        return np.zeros(0, dtype="int64")
    found = pc.index_in(as_arrow_strings(values), value_set=as_arrow_strings(index))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype("int64", copy=False)
