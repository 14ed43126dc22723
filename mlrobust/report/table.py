"""A small column table — the report's data type: named numpy columns of equal length, rows as dicts, CSV out, and
a pandas DataFrame on request (pandas is optional; nothing here needs it)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


def cell_text(value: Any) -> str:
    """How a value is written in the CSV and shown in the page: the same text in both (missing values are empty)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        # whole numbers (counts in a float column) without ".0"; others exactly as Python prints them
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(value)


@dataclass
class Table:
    """Columns of equal length, in order. ``table["size"]`` is a column (a numpy array), ``len(table)`` the number of
    rows, ``table.rows()`` the rows as dicts, ``table.where(mask)`` the rows where ``mask`` holds."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> "Table":
        """A table of ``rows`` (dicts; a missing key is a missing value) with the given column order."""
        out: dict[str, np.ndarray] = {}
        for name in columns:
            values = [row.get(name) for row in rows]
            out[name] = _column(values)
        return cls(out)

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; the table has {', '.join(self.columns)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def rows(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield {name: _plain(col[i]) for name, col in self.columns.items()}

    def where(self, mask: np.ndarray | Sequence[bool]) -> "Table":
        keep = np.asarray(mask, dtype=bool)
        return Table({name: col[keep] for name, col in self.columns.items()})

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV text (header row, then one line per row; missing values empty); written to ``path`` if
        given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.names)
        for row in self.rows():
            writer.writerow([cell_text(v) for v in row.values()])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas (pip install pandas); the table itself works without "
                              "it: table['column'], table.rows(), table.to_csv()") from None
        return pd.DataFrame({name: col for name, col in self.columns.items()})

    def __repr__(self) -> str:
        return f"Table({len(self)} rows: {', '.join(self.names)})"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (NaN of a float column stays NaN; None stays None)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _column(values: list[Any]) -> np.ndarray:
    """A typed column where the values allow one: bool, int, float (None as NaN), else object (integers with
    missing values among them stay integers, with None: a label is not a measurement)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present) and len(present) == len(values):
        return np.array(values, dtype=bool)
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present) \
            and len(present) == len(values):
        return np.array(values, dtype=np.int64)
    if present and any(isinstance(v, (float, np.floating)) for v in present) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
