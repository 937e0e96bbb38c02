"""``python -m service.recommend <image path | item id> -o out.png``: the brief's contact sheet.

The ORIGINAL image and its RECOMMENDED look-alikes in one row, each captioned with category and
score. It opens the encoder and store itself, or asks a running API with ``--api URL`` (needed
while the API holds the embedded store).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike.cli import description, int_range, program
from lookalike.errors import LookalikeError
from lookalike.images import decode_image, read_bytes
from lookalike.looks import looks_of
from lookalike.points import Hit
from lookalike.queries import Ranking, SearchFilter
from lookalike.runtime import load_encoder
from lookalike.settings import Settings
from lookalike.store import VectorStore
from service.items import image_path

TILE = 224
CAPTION = 56
MARGIN = 12


@dataclass(frozen=True)
class Tile:
    image: Image.Image
    lines: tuple[str, ...]


def contact_sheet(tiles: list[Tile]) -> Image.Image:
    """Tiles side by side on white, each with its caption underneath."""
    font = ImageFont.load_default(size=14)
    width = MARGIN + len(tiles) * (TILE + MARGIN)
    sheet = Image.new("RGB", (width, MARGIN * 2 + TILE + CAPTION), "white")
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = MARGIN + index * (TILE + MARGIN)
        sheet.paste(ImageOps.pad(tile.image, (TILE, TILE), color="white"), (x, MARGIN))
        for line_number, line in enumerate(tile.lines):
            draw.text((x, MARGIN + TILE + 4 + line_number * 17), line, fill="black", font=font)
    return sheet


def local_tiles(query: str, category: list[str], k: int, settings: Settings) -> list[Tile]:
    """Search with this process's own encoder and store."""
    store = VectorStore.from_settings(settings)
    try:
        encoder = load_encoder(settings)
        store.check_model(encoder.dim, encoder.identity)
        search_filter, ranking = SearchFilter(categories=category), Ranking(k, colour_weight=settings.colour_weight)
        if Path(query).is_file():
            original = decode_image(read_bytes(Path(query)), settings.max_image_pixels)
            hits = store.similar(looks_of(encoder, [original])[0], search_filter, ranking)
            first = Tile(original, ("ORIGINAL", Path(query).name))
        else:
            _refuse_missing_file(query)
            item = store.get(query)
            hits = store.similar(query, search_filter, ranking)
            first = Tile(_stored_image(settings, item), ("ORIGINAL", item.category, item.id))
        return [first, *_hit_tiles(settings, hits)]
    finally:
        store.close()


def api_tiles(query: str, category: list[str], k: int, api: str) -> list[Tile]:
    """Search through a running service (the same calls a site backend makes)."""
    params = {"k": k, "category": category}
    with httpx.Client(base_url=api, timeout=60) as client:
        if Path(query).is_file():
            data = Path(query).read_bytes()
            response = client.post("/v1/search", params=params, files={"image": (Path(query).name, data)})
            first = Tile(decode_image(data, 10**9), ("ORIGINAL", Path(query).name))
        else:
            _refuse_missing_file(query)
            response = client.get(f"/v1/items/{query}/similar", params=params)
            item = _answer(client.get(f"/v1/items/{query}"))
            first = Tile(_fetch(client, item["image_url"]), ("ORIGINAL", item["category"], query))
        _answer(response)
        tiles = [first]
        for rank, result in enumerate(response.json()["results"], start=1):
            lines = _caption(rank, result["category"], result["score"])
            tiles.append(Tile(_fetch(client, result["image_url"]), lines))
        return tiles


def _answer(response: httpx.Response) -> dict:
    """The JSON of a 200, or the API's own error message."""
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise LookalikeError(f"the API answered {response.status_code}: {message}")
    return response.json()


def _refuse_missing_file(query: str) -> None:
    """A query with a path separator meant a file (item ids hold none): say it is missing."""
    if "/" in query or "\\" in query:
        raise LookalikeError(f"{query}: no such file (and not an item id: ids hold no '/')")


def _caption(rank: int, category: str, score: float) -> tuple[str, ...]:
    return (f"RECOMMENDED #{rank}", category, f"score {score:.3f}")


def _hit_tiles(settings: Settings, hits: list[Hit]) -> list[Tile]:
    return [
        Tile(_stored_image(settings, hit.item), _caption(rank, hit.item.category, hit.score))
        for rank, hit in enumerate(hits, start=1)
    ]


def _stored_image(settings: Settings, item) -> Image.Image:
    try:
        return decode_image(read_bytes(image_path(settings, item)), settings.max_image_pixels)
    except LookalikeError:  # a missing file should not lose the whole sheet
        return Image.new("RGB", (TILE, TILE), "lightgrey")


def _fetch(client: httpx.Client, url: str) -> Image.Image:
    response = client.get(url)
    if response.status_code != 200:
        return Image.new("RGB", (TILE, TILE), "lightgrey")
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("service.recommend"), description=description(__doc__))
    parser.add_argument("query", help="an image file, or the id of a catalogue item")
    parser.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    parser.add_argument("-k", type=int_range(1, 100), default=4, help="number of recommendations, 1-100 (default 4)")
    parser.add_argument("-o", "--output", type=Path, default=Path("recommendations.png"))
    parser.add_argument("--api", help="base URL of a running service, e.g. http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    try:
        if args.api:
            tiles = api_tiles(args.query, args.category, args.k, args.api)
        else:
            tiles = local_tiles(args.query, args.category, args.k, Settings.from_env())
    except (LookalikeError, httpx.HTTPError) as e:
        print(f"recommend: error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    try:
        contact_sheet(tiles).save(args.output)
    except (OSError, ValueError) as e:  # a folder that cannot be written; a suffix that is no image format
        print(f"recommend: error: cannot write {args.output}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(tiles) - 1} recommendations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
