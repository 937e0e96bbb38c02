"""Reading folders and manifests: good rows become items, bad rows become report lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike.catalogue import read_catalogue
from lookalike.errors import CatalogueError
from tests.conftest import write_manifest


def test_folder_items_take_their_category_from_the_folder(catalogue_dir: Path):
    catalogue = read_catalogue(catalogue_dir)
    assert len(catalogue.items) == 13  # 12 images + the corrupt file (it fails later, at decoding)
    item = next(i for i in catalogue.items if i.id == "green_square-item2")
    assert (item.category, item.image) == ("green_square", "green_square/item2.jpg")
    assert catalogue.errors == []


def test_photos_beside_the_categories_and_folders_inside_one_are_reported_not_left_out(catalogue_dir: Path):
    """Both were skipped without a word: a shop's `shoes/running/` never reached the collection."""
    (catalogue_dir / "loose.JPG").write_bytes((catalogue_dir / "green_square" / "item2.jpg").read_bytes())
    (catalogue_dir / "README.md").write_text("notes")  # not a photo: no line
    (catalogue_dir / "green_square" / "running").mkdir()
    (catalogue_dir / "green_square" / ".cache").mkdir()  # hidden: skipped
    catalogue = read_catalogue(catalogue_dir)
    assert len(catalogue.items) == 13
    assert [(e.item_id, e.path, e.reason.split(":")[0]) for e in catalogue.errors] == [
        (None, "loose.JPG", "not in a category folder"),
        (None, "green_square/running", "a folder inside a category folder is not read"),
    ]


def test_folder_and_file_names_an_id_cannot_spell_get_a_stable_id_of_their_own(tmp_path: Path):
    """Spaces, accents and brackets in names failed every such item ("id must be 1-200 characters...")."""
    from lookalike.catalogue import derive_item_id

    for relative in ("Running Shoes/red shoe 1.jpg", "Running Shoes/red_shoe_1.jpg", "Étagères/x (2).jpg", "ok/a.jpg"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    catalogue = read_catalogue(tmp_path)
    ids = {item.image: item.id for item in catalogue.items}
    assert catalogue.errors == [] and len(set(ids.values())) == 4
    assert ids["ok/a.jpg"] == "ok-a" and ids["Running Shoes/red_shoe_1.jpg"].startswith("Running_Shoes-red_shoe_1-")
    assert ids["Étagères/x (2).jpg"].startswith("Etageres-x_2-")
    assert ids == {image: derive_item_id(image) for image in ids}  # the same on every run


def test_an_unreadable_category_folder_fails_its_own_row_only(catalogue_dir: Path, monkeypatch):
    """A folder the ingest user may not list stopped the whole catalogue (as root, simulated)."""
    iterdir = Path.iterdir

    def refused(path: Path):
        if path.name == "blue_bar":
            raise PermissionError(13, "Permission denied")
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", refused)
    catalogue = read_catalogue(catalogue_dir)
    assert len(catalogue.items) == 9 and {item.category for item in catalogue.items} == {"red_round", "green_square"}
    assert [(e.path, e.reason) for e in catalogue.errors] == [
        ("blue_bar", "cannot read the category folder: Permission denied")
    ]


def test_csv_manifest_extra_columns_become_metadata(catalogue_dir: Path):
    manifest = write_manifest(
        catalogue_dir,
        [
            {"id": "sku-1", "image": "red_round/item0.jpg", "category": "ball", "colour": "red", "brand": "Acme"},
            {"id": "sku-2", "image": "blue_bar/item1.jpg", "category": "bar", "colour": "blue", "brand": ""},
        ],
    )
    items = {item.id: item for item in read_catalogue(manifest).items}
    assert items["sku-1"].metadata == {"colour": "red", "brand": "Acme"}
    assert items["sku-2"].metadata == {"colour": "blue"}  # empty cells are absent, not ""
    assert items["sku-2"].path == (catalogue_dir / "blue_bar/item1.jpg").resolve()


def test_jsonl_manifest_keeps_json_types(catalogue_dir: Path):
    manifest = write_manifest(
        catalogue_dir,
        [{"id": "a", "image": "red_round/item0.jpg", "category": "ball", "size": 42, "sale": True}],
        name="items.jsonl",
    )
    (item,) = read_catalogue(manifest).items
    assert item.metadata == {"size": 42, "sale": True}


def test_bad_rows_are_reported_one_by_one(catalogue_dir: Path, tmp_path: Path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (catalogue_dir / "link.jpg").symlink_to(outside)
    (catalogue_dir / "loop.jpg").symlink_to(catalogue_dir / "loop.jpg")  # stopped the whole read with a traceback
    rows = [
        {"id": "ok", "image": "red_round/item0.jpg", "category": "ball"},
        {"id": "dup", "image": "red_round/item1.jpg", "category": "ball"},
        {"id": "dup", "image": "red_round/item2.jpg", "category": "ball"},
        {"id": "up", "image": "../secret.jpg", "category": "ball"},
        {"id": "abs", "image": str(outside), "category": "ball"},
        {"id": "link", "image": "link.jpg", "category": "ball"},
        {"id": "loop", "image": "loop.jpg", "category": "ball"},
        {"id": "nocat", "image": "red_round/item3.jpg", "category": ""},
        {"id": "bad/id", "image": "red_round/item3.jpg", "category": "ball"},
    ]
    catalogue = read_catalogue(write_manifest(catalogue_dir, rows))
    assert [item.id for item in catalogue.items] == ["ok", "dup"]
    reasons = {error.item_id: error.reason for error in catalogue.errors}
    assert "duplicate id" in reasons["dup"]
    assert "leaves the catalogue root" in reasons["up"]
    assert "absolute" in reasons["abs"]
    assert "leaves the catalogue root" in reasons["link"]
    assert "symbolic link loop" in reasons["loop"]
    assert "no category" in reasons["nocat"]
    assert "must be" in reasons["bad/id"]


def test_non_utf8_row_is_reported(catalogue_dir: Path):
    manifest = catalogue_dir / "m.csv"
    manifest.write_bytes(b"id,image,category\nok,red_round/item0.jpg,ball\nbad,red_round/item1.jpg,b\xffll\n")
    catalogue = read_catalogue(manifest)
    assert [item.id for item in catalogue.items] == ["ok"]
    assert "UTF-8" in catalogue.errors[0].reason


def test_manifest_without_required_columns_is_refused(catalogue_dir: Path):
    manifest = catalogue_dir / "m.csv"
    manifest.write_text("sku,picture\n1,a.jpg\n")
    with pytest.raises(CatalogueError, match="id, image, category"):
        read_catalogue(manifest)


def test_missing_catalogue_says_what_to_set(tmp_path: Path):
    with pytest.raises(CatalogueError, match="CATALOGUE_DIR"):
        read_catalogue(tmp_path / "nowhere")


def test_product_ids_are_text_or_numbers(catalogue_dir: Path):
    rows = [
        {"id": "a", "image": "red_round/item0.jpg", "category": "ball", "product_id": 7},
        {"id": "b", "image": "red_round/item1.jpg", "category": "ball", "product_id": "  sku-1 "},
        {"id": "c", "image": "red_round/item2.jpg", "category": "ball", "product_id": True},
        {"id": "d", "image": "red_round/item3.jpg", "category": "ball", "product_id": "x" * 201},
        {"id": "e", "image": "blue_bar/item0.jpg", "category": "bar", "product_id": " "},
    ]
    catalogue = read_catalogue(write_manifest(catalogue_dir, rows, name="items.jsonl"))
    assert {item.id: item.product_id for item in catalogue.items} == {"a": "7", "b": "sku-1", "e": None}
    assert sorted(error.item_id for error in catalogue.errors) == ["c", "d"]


def test_csv_columns_declare_their_type_and_a_bad_cell_fails_its_row(catalogue_dir: Path):
    header = "id,image,category,price:number,stock:int,on_sale:bool,sku\n"
    rows = [
        "a,red_round/item0.jpg,red_round,22.11,3,TRUE,007\n",
        "b,red_round/item1.jpg,red_round,1e3,-2,false,\n",
        "c,red_round/item2.jpg,red_round,cheap,1,true,x\n",
        "d,red_round/item3.jpg,red_round,,,,\n",
    ]
    (catalogue_dir / "typed.csv").write_text(header + "".join(rows))
    catalogue = read_catalogue(catalogue_dir / "typed.csv")
    items = {item.id: item.metadata for item in catalogue.items}
    assert items["a"] == {"price": 22.11, "stock": 3, "on_sale": True, "sku": "007"}  # undeclared stays text
    assert items["b"] == {"price": 1000.0, "stock": -2, "on_sale": False}
    assert items["d"] == {}  # an empty cell is no value
    (error,) = catalogue.errors
    assert error.item_id == "c" and "line 4" in error.reason and "'cheap' is not a number" in error.reason
    (catalogue_dir / "bad.csv").write_text("id,image,category,price:money\n")
    with pytest.raises(CatalogueError, match="price:money"):
        read_catalogue(catalogue_dir / "bad.csv")


def test_text_cells_keep_their_line_breaks_and_rows_their_line_numbers(catalogue_dir: Path):
    """Rows were split with `str.splitlines`: a quoted line break vanished from its cell, and a
    Unicode line or paragraph separator (in scraped descriptions) cut an unquoted cell, or a JSONL
    row, in two: the rest became a broken row, and the item lost its metadata or failed."""
    description = "Soft leather.\nHand stitched.\u2028Made in Italy,\u2029 since 1950\x85\x0c!"
    csv_rows = [
        {"id": "a", "image": "red_round/item0.jpg", "category": "ball", "description": description},
        {"id": "b", "image": "red_round/item1.jpg", "category": "ball", "note": "one\u2028two"},
        {"id": "c", "image": "red_round/item2.jpg", "category": "ball", "price:number": "cheap"},
    ]
    csv_manifest = write_manifest(catalogue_dir, csv_rows)
    jsonl_manifest = catalogue_dir / "items.jsonl"  # the separators raw, as JSON allows (not escaped)
    jsonl_manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in csv_rows[:2]))
    assert "\u2028" in jsonl_manifest.read_text()
    for manifest in (csv_manifest, jsonl_manifest):
        catalogue = read_catalogue(manifest)
        items = {item.id: item.metadata for item in catalogue.items}
        assert items["a"]["description"] == description
        assert items["b"]["note"] == "one\u2028two"
    errors = read_catalogue(csv_manifest).errors
    assert [error.reason.split(":")[0] for error in errors] == ["line 5"]  # row c starts on line 5 of the file


def test_a_csv_manifest_with_windows_line_ends_reads_as_any_other(catalogue_dir: Path):
    manifest = catalogue_dir / "m.csv"
    manifest.write_bytes(b'id,image,category,note\r\nok,red_round/item0.jpg,ball,"two\r\nlines"\r\n')
    (item,) = read_catalogue(manifest).items
    assert item.metadata == {"note": "two\nlines"}  # line ends read as "\n", as Python reads text


def test_a_manifest_in_a_windows_code_page_fails_its_rows_saying_how_to_save_it(catalogue_dir: Path):
    manifest = catalogue_dir / "m.csv"
    manifest.write_bytes(
        "id,image,category\r\nok,red_round/item0.jpg,ball\r\né,red_round/item1.jpg,été\r\n".encode("cp1252")
    )
    catalogue = read_catalogue(manifest)
    assert [item.id for item in catalogue.items] == ["ok"]
    (error,) = catalogue.errors
    assert error.reason == "line 3: not valid UTF-8: save the manifest as UTF-8 (a spreadsheet's 'CSV UTF-8')"


def test_image_links_and_windows_paths_in_a_manifest(catalogue_dir: Path):
    """A product feed's image links and a manifest written on Windows failed as "file not found"
    under a path glued together from them (``<root>/https:/cdn...``)."""
    rows = [
        {"id": "link", "image": "https://cdn.example.com/a.jpg", "category": "ball"},
        {"id": "windows", "image": "red_round\\item0.jpg", "category": "ball"},
        {"id": "drive", "image": "C:\\photos\\a.jpg", "category": "ball"},
        {"id": "share", "image": "\\\\server\\photos\\a.jpg", "category": "ball"},
    ]
    catalogue = read_catalogue(write_manifest(catalogue_dir, rows))
    assert [(item.id, item.image) for item in catalogue.items] == [("windows", "red_round/item0.jpg")]
    reasons = {error.item_id: error.reason for error in catalogue.errors}
    assert "is a URL" in reasons["link"]
    assert "absolute" in reasons["drive"] and "absolute" in reasons["share"]


@pytest.mark.parametrize("header", ["id,image,category,colour,colour", "id,image,category,price,price:number"])
def test_a_column_named_twice_is_refused_not_silently_half_read(catalogue_dir: Path, header: str):
    manifest = catalogue_dir / "m.csv"
    manifest.write_text(f"{header}\nok,red_round/item0.jpg,ball,red,blue\n")
    with pytest.raises(CatalogueError, match="appears twice"):
        read_catalogue(manifest)


@pytest.mark.parametrize(
    "text",
    [
        'id, image, category, note\nok, red_round/item0.jpg, ball, "round, red"\n',  # by hand
        "id;image;category;note\nok;red_round/item0.jpg;ball;round, red\n",  # decimal comma
        "id\timage\tcategory\tnote\nok\tred_round/item0.jpg\tball\tround, red\n",
    ],
)
def test_hand_written_and_spreadsheet_csv_manifests_read_as_any_other(catalogue_dir: Path, text: str):
    """Spaces after the commas, or a spreadsheet's ";" (where the decimal mark is a comma) or tab:
    each was refused as lacking its columns ("it has id,  image, ..." / "it has id;image;category")."""
    manifest = catalogue_dir / "m.csv"
    manifest.write_text(text)
    (item,) = read_catalogue(manifest).items
    assert (item.id, item.image, item.category) == ("ok", "red_round/item0.jpg", "ball")
    assert item.metadata == {"note": "round, red"}
