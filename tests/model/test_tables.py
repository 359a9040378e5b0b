"""The one table reader: CSV, TSV and Parquet alike, strings kept as written, columns found by alias."""

import pandas as pd
import pytest

from birdsearch.errors import ConfigError
from birdsearch.model.tables import pick_column, pick_columns, read_table

ROWS = {"Path": ["a.wav", "b.wav"], "Species ": ["Turdus merula", "0042"], "start_s": ["", "1.5"]}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_every_format_reads_the_same_table(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    table = read_table(path)
    assert table.to_dict("list") == ROWS  # "0042" stays a string, an empty cell stays empty
    assert pick_column(table.columns, ("species", "label"), "species", "t") == "Species "
    assert pick_columns(table.columns, {"path": ("file", "path"), "end": ("end_s",)}) == {"path": "Path"}


def test_errors_name_the_table_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="gallery manifest .*nope.csv does not exist"):
        read_table(tmp_path / "nope.csv", "gallery manifest")
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(ConfigError, match="unknown table format '.xlsx'; use .csv, .tsv or .parquet"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="cannot read table .*broken.parquet"):
        read_table(tmp_path / "broken.parquet")
    with pytest.raises(
        ConfigError, match=r"t.csv: no species column; expected one of species, label \(found: a, b\)"
    ):
        pick_column(["a", "b"], ("species", "label"), "species", "t.csv")
