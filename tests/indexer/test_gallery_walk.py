"""The folder walk a (re)index starts with: what counts as a gallery photo, and its key."""

import os

from birdsearch.indexer.gallery import read_gallery


def test_the_folder_walk_keys_links_and_hidden_entries(tmp_path):
    gallery = tmp_path / "gallery"
    (gallery / "Junco_hyemalis" / "2024").mkdir(parents=True)
    (gallery / "Junco_hyemalis" / "2024" / "b.jpg").write_bytes(b"b")
    (gallery / "Junco_hyemalis" / "a.jpg").write_bytes(b"a")
    (gallery / "Junco_hyemalis" / ".hidden.jpg").write_bytes(b"h")
    (gallery / ".trash" / "Junco_hyemalis").mkdir(parents=True)
    (gallery / ".trash" / "Junco_hyemalis" / "x.jpg").write_bytes(b"x")
    (gallery / "loose.jpg").write_bytes(b"l")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "target.jpg").write_bytes(b"t")
    (gallery / "Passer_domesticus").mkdir()
    os.symlink(outside / "target.jpg", gallery / "Passer_domesticus" / "linked.jpg")
    os.symlink(tmp_path / "missing.jpg", gallery / "Passer_domesticus" / "broken.jpg")
    os.symlink(outside, gallery / "Passer_domesticus" / "linked_folder")

    read = read_gallery(gallery)
    assert [(i.key, i.label) for i in read.items] == [
        ("Junco_hyemalis/2024/b.jpg", "Junco_hyemalis"),
        ("Junco_hyemalis/a.jpg", "Junco_hyemalis"),
        ("Passer_domesticus/linked.jpg", "Passer_domesticus"),
    ]
    paths = {i.key: i.path for i in read.items}
    assert paths["Passer_domesticus/linked.jpg"] == str((outside / "target.jpg").resolve())
    assert paths["Junco_hyemalis/a.jpg"] == str((gallery / "Junco_hyemalis" / "a.jpg").resolve())
    assert read.skipped == [("loose.jpg", "not inside a species folder (expected <species>/<image>)")]
