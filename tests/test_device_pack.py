"""`make device-pack`: the catalogue copy that travels to a lent accelerator."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench.device_pack import reencode_catalogue
from lookalike.catalogue import read_catalogue


def test_reencoded_catalogue_keeps_every_item_smaller(catalogue_dir: Path, tmp_path: Path) -> None:
    Image.new("RGB", (900, 600), (10, 120, 200)).save(catalogue_dir / "blue_bar" / "large.png")
    copy = tmp_path / "copy"

    count = reencode_catalogue(catalogue_dir, copy, longest_side=256)

    original, travelled = read_catalogue(catalogue_dir), read_catalogue(copy)
    assert count == 14  # 12 drawn, the large one, the broken one
    assert sorted(i.id for i in travelled.items) == sorted(i.id for i in original.items)
    assert sorted(i.category for i in travelled.items) == sorted(i.category for i in original.items)
    with Image.open(copy / "blue_bar" / "large.png") as large:
        assert large.format == "JPEG" and large.size == (256, 171)
    broken = Path("red_round/broken.jpg")
    assert (copy / broken).read_bytes() == (catalogue_dir / broken).read_bytes()  # fails there as here
