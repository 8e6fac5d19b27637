"""The benchmark scripts' settings parser (benchmarks/timing.py)."""
import pytest

from benchmarks.timing import parse_settings

FIELDS = ("block_rows", "block_vocab", "num_warps", "num_stages")


def test_parse_settings_fills_left_out_trailing_fields_from_defaults():
  assert parse_settings(["1:2048:4", "2:1024:8:3"], FIELDS, "1:2048:4", rows=8,
                        defaults=(2,)) == [(1, 2048, 4, 2), (2, 1024, 8, 3)]


@pytest.mark.parametrize("item", ["1:2048", "1:2048:4:2:9", "1:x:4"])
def test_parse_settings_names_a_malformed_entry(item):
  with pytest.raises(ValueError, match=f"--tiles entry '{item}' is not "
                     "block_rows:block_vocab:num_warps:num_stages"):
    parse_settings([item], FIELDS, "1:2048:4", defaults=(2,))


def test_parse_settings_rejects_rows_per_block_that_do_not_divide_the_rows():
  with pytest.raises(ValueError, match="block_rows must divide --rows=6"):
    parse_settings(["4:1024:4"], FIELDS, "1:2048:4", rows=6, defaults=(2,))
