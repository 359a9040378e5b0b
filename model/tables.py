"""The one reader of tables from outside: CSV, TSV or Parquet, and the columns a reader needs from them.

Gallery manifests (``birdsearch.indexer.gallery``), distillation manifests and species tables
(``birdsearch.model.distill.manifest``), evaluation data sets and galleries
(``birdsearch.model.evaluate``) and calibration clips (``birdsearch.engine.calibrate``) all read
through it: every cell of a CSV or TSV is a string (nothing becomes NaN or a number behind the
user's back), Parquet keeps its types, and a column is found by any of its accepted names,
case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from birdsearch.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", *PARQUET_SUFFIXES)


def read_table(path: str | Path, what: str = "table") -> pd.DataFrame:
    """A CSV, TSV or Parquet file as a DataFrame of strings (Parquet keeps its types).

    ``what`` names the table in errors ("gallery manifest", "calibration clips", ...).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as e:  # pandas and pyarrow raise many types for unreadable files
        raise ConfigError(f"cannot read {what} {path}: {e}") from e


def pick_column(
    columns: Iterable[str], wanted: Sequence[str], what: str, table: str, required: bool = True
) -> str | None:
    """The first of ``wanted`` present in ``columns`` (case-insensitive, surrounding spaces ignored)."""
    columns = [str(c) for c in columns]
    lower = {c.lower().strip(): c for c in columns}
    for name in wanted:
        if name in lower:
            return lower[name]
    if required:
        raise ConfigError(
            f"{table}: no {what} column; expected one of {', '.join(wanted)} (found: {', '.join(columns)})"
        )
    return None


def pick_columns(columns: Iterable[str], aliases: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each field of ``aliases`` (field -> accepted names) whose column ``columns`` has: field -> column."""
    columns = list(columns)
    found = {
        field: pick_column(columns, names, field, "", required=False) for field, names in aliases.items()
    }
    return {field: column for field, column in found.items() if column is not None}
