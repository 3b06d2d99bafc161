"""What a monitor has measured, keyed by epoch or step, as a resumed run expects.

A run resumed from a backup (BackupAndRestore) or fit again from an earlier
`initial_epoch` measures epochs it has measured before: the new measurement
replaces the old and everything after it, as Keras's History does not but a
user reading the curve expects.
"""

import numpy as np


class Records:
    """`(key, {path: per-slice errors})` in key order."""

    def __init__(self):
        self._records = []

    def add(self, key, errors):
        """Appends `errors` at `key`, dropping the records at or after it first."""
        while self._records and self._records[-1][0] >= key:
            self._records.pop()
        self._records.append((key, errors))

    @property
    def keys(self):
        return [key for key, _ in self._records]

    def stack(self, widths):
        """`{path: array (records, width)}` for each `path: width` of `widths` (a weight's slices, ...)."""
        n = len(self._records)
        return {path: np.array([r[path] for _, r in self._records]).reshape(n, width) for path, width in widths.items()}
