"""Files written whole or not at all (`nsladv._files`)."""

import numpy as np
import pytest

from nsladv._files import replace_file


def test_bytes_text_and_a_writer_land_whole(tmp_path):
    assert replace_file(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert replace_file(tmp_path / "c.json", '{"é": 1}').read_text(encoding="utf-8") == '{"é": 1}'
    replace_file(tmp_path / "d.npz", lambda f: np.savez(f, rows=np.arange(3)))
    with np.load(tmp_path / "d.npz") as saved:
        np.testing.assert_array_equal(saved["rows"], [0, 1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.json", "d.npz"]  # no temporary left


def test_a_writer_that_fails_leaves_the_old_file(tmp_path):
    path = replace_file(tmp_path / "state.json", "old")

    def half_then_fail(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_file(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
