"""Query parameters of the search endpoints, validated by one pydantic model.

Accepted from the query string and (for POST) form fields alike. Unknown parameters are refused
so that a typo (`categroy=`) is a 400, not a silently unfiltered result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar, get_origin

from PIL import Image, ImageColor
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from werkzeug.datastructures import MultiDict

from lookalike.errors import InvalidRequest
from lookalike.images import MAX_ASPECT_RATIO, too_elongated
from lookalike.queries import FUSION_CANDIDATES, Boost, Range, Ranking, SearchFilter

FILTER_PREFIX = "filter."
BOOST_PREFIX = "boost."
#: How a boost changes the score (documented in the README and on each `boost.<field>` parameter).
BOOST_FORMULA = (
    f"score = similarity + Σ weight × field over the nearest {FUSION_CANDIDATES} candidates (booleans count "
    "1/0; an item without a number in the field adds 0)"
)
AUTO = "auto"
Params = TypeVar("Params", bound=BaseModel)
FILTER_NOTE = (
    "Metadata filters: `filter.<field>=<value>` (repeat for any of; `12` also matches the number 12, "
    "`true` the boolean); numeric ranges: `filter.<field>.gte|gt|lte|lt=<number>` (items whose field "
    "is a number in range). Filters run inside the nearest-neighbour search. Business boosts: "
    "`boost.<field>=<weight>` on numeric or boolean metadata."
)
RANGE_OPERATORS = ("gte", "gt", "lte", "lt")
#: The colour weight of a search that names a colour (`colour=`) but no weight: colour counts as much as shape.
COLOUR_TARGET_WEIGHT = 0.5
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _not_true_or_false(value: Any) -> Any:
    """JSON's true/false where a number belongs is a client's mistake, not 1/0 (pydantic's lax
    mode reads it so; a string such as "4" stays accepted, as from a query string)."""
    if isinstance(value, bool):
        raise ValueError("a number is needed, not true/false")
    return value


Integer = Annotated[int, BeforeValidator(_not_true_or_false)]
Number = Annotated[float, BeforeValidator(_not_true_or_false)]
Value = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Bounds(BaseModel):
    """`filter.<field>.gte|gt|lte|lt`: bounds on a numeric metadata field."""

    model_config = ConfigDict(extra="forbid")

    gte: Number | None = Field(None, allow_inf_nan=False)
    gt: Number | None = Field(None, allow_inf_nan=False)
    lte: Number | None = Field(None, allow_inf_nan=False)
    lt: Number | None = Field(None, allow_inf_nan=False)


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Integer = Field(4, ge=1, le=100, description="number of results")
    category: list[Value] = Field(default_factory=list, max_length=100, description="any of these")
    exclude: list[Value] = Field(default_factory=list, max_length=1000, description="item ids to leave out")
    score_threshold: Number | None = Field(None, ge=-1.0, le=1.0, description="minimum cosine similarity")
    offset: Integer = Field(0, ge=0, le=10_000, description="results to skip (paging)")
    filters: dict[FieldName, list[Value]] = Field(default_factory=dict, description="filter.<field>=<value>")
    ranges: dict[FieldName, Bounds] = Field(default_factory=dict, description="filter.<field>.gte=<number>, ...")
    boosts: dict[FieldName, Annotated[Number, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]] = Field(
        default_factory=dict, description=f"boost.<field>=<weight>: {BOOST_FORMULA}"
    )
    hide_duplicates: bool = Field(
        False,
        description="leave out items whose image bytes equal the query's (for recommend: any example's; "
        "in a batch: the entry's item's)",
    )
    colour_weight: Number | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="weight of colour against shape: score = (1-w)·shape + w·colour cosine; 0 = shape only, "
        "1 = colour only; default COLOUR_WEIGHT",
    )
    group_by: Literal["product_id"] | None = Field(None, description="`product_id`: each product once, its best photo")
    diversity: Number = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="0 = by similarity alone; up to 1 = re-ranked by maximal marginal relevance, so near-identical "
        "items (one product's variants) do not fill the page",
    )
    colour: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        None,
        description="'like this, but in this colour': `#rrggbb` or a CSS colour name replaces the query's colour; "
        f"with no colour_weight given, the weight is {COLOUR_TARGET_WEIGHT}",
    )

    @property
    def auto_category(self) -> bool:
        """`category=auto`: let the fine-tuned head choose the category."""
        return AUTO in self.category

    @field_validator("colour")
    @classmethod
    def _known_colour(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ImageColor.getrgb(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a colour: give #rrggbb or a CSS colour name") from None
        return value

    @model_validator(mode="after")
    def _auto_alone(self) -> SearchParams:
        if self.auto_category and len(self.category) > 1:
            raise ValueError("category=auto cannot be combined with other categories")
        return self

    def ranking(self, default_colour_weight: float) -> Ranking:
        """How Qdrant scores, groups and pages the results."""
        if self.colour_weight is not None:
            weight = self.colour_weight
        else:
            weight = default_colour_weight if self.colour is None else COLOUR_TARGET_WEIGHT
        one_per_product = self.group_by == "product_id"
        boosts = tuple(Boost(name, value) for name, value in sorted(self.boosts.items()))
        return Ranking(
            self.k, self.offset, self.score_threshold, weight, one_per_product, self.colour, self.diversity, boosts
        )

    def search_filter(
        self, categories: list[str] | None = None, query_sha256s: Sequence[str | None] = ()
    ) -> SearchFilter:
        """The filter for Qdrant; ``categories`` replaces `auto` once it is resolved.

        ``query_sha256s``: the image bytes of the query (each example, for recommend), hidden from
        the results when `hide_duplicates` is on.
        """
        chosen = self.category if categories is None else categories
        hidden = sorted({s for s in query_sha256s if s}) if self.hide_duplicates else []
        ranges = {name: Range(**bounds.model_dump()) for name, bounds in self.ranges.items()}
        return SearchFilter(chosen, self.exclude, self.filters, hidden, ranges=ranges)


#: A box narrower or lower than this many pixels of the photo is refused (nothing to recognise).
MIN_BOX_PIXELS = 8
#: Regions of one photo searched in one request (`boxes`): one engine batch.
MAX_BOXES = 10
#: Longest `text=` accepted (characters); the tokenizer truncates to the model's context anyway.
MAX_TEXT = 300
Box = tuple[float, float, float, float]


class PhotoSearchParams(SearchParams):
    """Searches with uploaded photos: the search parameters and a region of the photo."""

    box: str | None = Field(
        None,
        pattern=r"^\s*[0-9.]+\s*(,\s*[0-9.]+\s*){3}$",
        description="`x0,y0,x1,y1`, fractions (0..1) of the photo's width and height: search with that region "
        "of the photo only (cropped before the model and the colour histogram)",
    )

    @field_validator("box")
    @classmethod
    def _box_inside_the_photo(cls, value: str | None) -> str | None:
        if value is not None:
            _parsed_box(value)
        return value

    def crop(self, image: Image.Image) -> Image.Image:
        """The photo, or its ``box`` region (400 when that region is a few pixels only)."""
        if self.box is None:
            return image
        return crop_to(image, _parsed_box(self.box))


def _parsed_box(text: str) -> Box:
    return _checked(tuple(float(part) for part in text.split(",")))


def _checked(box: Sequence[float]) -> Box:
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise ValueError("a box is x0,y0,x1,y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return (box[0], box[1], box[2], box[3])


def crop_to(image: Image.Image, box: Box) -> Image.Image:
    """The region ``box`` (fractions) of the photo; 400 when it is a few pixels only or a sliver."""
    width, height = image.size
    region = (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))
    sides = (region[2] - region[0], region[3] - region[1])
    shown = ",".join(f"{v:g}" for v in box)
    if min(sides) < MIN_BOX_PIXELS:
        raise InvalidRequest(f"box {shown} is under {MIN_BOX_PIXELS} pixels of this {width}x{height} photo")
    if too_elongated(*sides):
        raise InvalidRequest(f"box {shown}: its sides are more than {MAX_ASPECT_RATIO}:1 apart")
    return image.crop(region)


class UploadSearchParams(PhotoSearchParams):
    """``POST /v1/search``: one photo, whole, one region of it (`box`), or several (`boxes`)."""

    boxes: Json[list[list[Number]]] | None = Field(
        None,
        description=f"several regions in one request: a JSON list of up to {MAX_BOXES} `[x0, y0, x1, y1]` "
        "(fractions, as `box`). The answer has one result list per region in `regions`, in order (one "
        "engine batch; with `category=auto` each region gets its own prediction), and `results` is empty",
    )

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT)] | None = Field(
        None,
        description="search by words (CLIP's text tower; a pretrained model): alone, with no image, or mixed with "
        "the photo by `text_weight`. 400 where the encoder has no text tower (a fine-tuned checkpoint, the onnx "
        "runtime, TEXT_SEARCH=false), saying which",
    )
    text_weight: Number = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="with a photo and `text`: the query embedding is (1 - w)·photo + w·text, normalised",
    )

    @field_validator("boxes")
    @classmethod
    def _boxes_inside_the_photo(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is not None:
            if not 1 <= len(value) <= MAX_BOXES:
                raise ValueError(f"give 1 to {MAX_BOXES} boxes")
            for box in value:
                _checked(box)
        return value

    @model_validator(mode="after")
    def _box_or_boxes(self) -> UploadSearchParams:
        if self.box is not None and self.boxes is not None:
            raise ValueError("give `box` or `boxes`, not both")
        if self.text is not None and self.boxes is not None:
            raise ValueError("`text` searches one query: not with `boxes`")
        return self

    def regions(self) -> list[Box]:
        return [_checked(box) for box in self.boxes or []]


class RecommendParams(PhotoSearchParams):
    """``POST /v1/recommend``: example item ids besides the search parameters (images come as files)."""

    positive: list[Value] = Field(default_factory=list, max_length=50, description="more like these item ids")
    negative: list[Value] = Field(default_factory=list, max_length=50, description="less like these item ids")


MAX_BATCH = 100


class BatchQuery(SearchParams):
    """One entry of ``POST /v1/similar:batch``: an item id and the search parameters of by-id search."""

    id: Value = Field(description="a stored item's id")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[BatchQuery] = Field(min_length=1, max_length=MAX_BATCH)


def parse_json_body(model: type[Params], data: bytes) -> Params:
    """Validate a JSON request body into ``model``; 400 with every problem listed.

    Parsed by pydantic's own parser, which bounds nesting depth (Python's ``json`` recurses once per
    level and a deeply nested body would end in a RecursionError).
    """
    try:
        return model.model_validate_json(data or b"null")
    except ValidationError as e:
        problems = "; ".join(f"{_json_path(error['loc'])}: {_message(error)}" for error in e.errors())
        raise InvalidRequest(f"invalid body: {problems}") from e


class RandomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Integer = Field(1, ge=1, le=100, description="number of items")
    category: list[Value] = Field(default_factory=list, max_length=100, description="any of these")


class PutForm(BaseModel):
    """The form fields of ``PUT /v1/items/<id>`` besides the image."""

    model_config = ConfigDict(extra="forbid")

    category: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    metadata: Json[dict[str, Any]] | None = Field(None, description="a JSON object of metadata fields")
    product_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = Field(
        None, description="the product this photo shows (for group_by=product_id); default: the item itself"
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        _finite(value)
        return value


def _finite(value: Any, where: str = "metadata") -> None:
    """Refuse NaN and infinities anywhere in a JSON value: Qdrant payloads are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value!r}: numbers must be finite")
    if isinstance(value, dict):
        for key, inner in value.items():
            _finite(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for inner in value:
            _finite(inner, where)


def parse_params(model: type[Params], values: MultiDict[str, str]) -> Params:
    """Validate a request's args/form into ``model``; 400 with every problem listed.

    Fields typed as lists take every value of a repeated parameter; ``filter.<field>`` parameters
    go to a ``filters`` field when the model has one.
    """
    raw: dict[str, object] = {}
    list_fields = {name for name, info in model.model_fields.items() if get_origin(info.annotation) is list}
    for key in values:
        if not key:  # a multipart part without a name
            raise InvalidRequest("invalid parameters: a form field without a name")
        name, _, operator = key[len(FILTER_PREFIX) :].rpartition(".")
        if key.startswith(FILTER_PREFIX) and name and operator in RANGE_OPERATORS and "ranges" in model.model_fields:
            raw.setdefault("ranges", {}).setdefault(name, {})[operator] = values.get(key)  # type: ignore[union-attr]
        elif key.startswith(BOOST_PREFIX) and "boosts" in model.model_fields:
            raw.setdefault("boosts", {})[key[len(BOOST_PREFIX) :]] = values.get(key)  # type: ignore[index]
        elif key.startswith(FILTER_PREFIX) and "filters" in model.model_fields:
            raw.setdefault("filters", {})[key[len(FILTER_PREFIX) :]] = values.getlist(key)  # type: ignore[index]
        else:
            raw[key] = values.getlist(key) if key in list_fields else values.get(key)
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(_describe(error) for error in e.errors())
        raise InvalidRequest(f"invalid parameters: {problems}") from e


def parse_search_params(values: MultiDict[str, str]) -> SearchParams:
    return parse_params(SearchParams, values)


def _describe(error: dict) -> str:
    location = error["loc"]
    if location and location[0] in ("filters", "ranges") and len(location) > 1:
        name = FILTER_PREFIX + ".".join(str(part) for part in location[1:3])
    elif location and location[0] == "boosts" and len(location) > 1:
        name = BOOST_PREFIX + str(location[1])
    else:
        name = str(location[0]) if location else "request"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter {name!r}"
    return f"{name}: {_message(error)}"


def _json_path(location: Sequence[str | int]) -> str:
    """Where in a JSON body, as the client wrote it: ``queries[2].ranges.price.gte``."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    return path.removeprefix(".") or "body"


def _message(error: dict) -> str:
    return error["msg"].removeprefix("Value error, ")
