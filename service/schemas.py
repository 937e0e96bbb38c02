"""Response models of the API. Views build their JSON through these, and /openapi.json is
generated from them and from the request models in `service.params`: one source for both."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(None, description="also in the X-Request-ID header and the logs")


class Result(BaseModel):
    id: str
    score: float = Field(description="cosine similarity, -1..1 (with colour_weight: the weighted sum of both)")
    category: str
    product_id: str = Field(description="its product; the item's own id when it has none")
    image_url: str
    metadata: dict[str, Any]


class PredictedCategory(BaseModel):
    category: str
    probability: float
    applied: bool = Field(description="whether the search was filtered by it")
    min_probability: float
    in_collection: bool = Field(
        True,
        description="whether the collection holds items of this category; a head trained on other classes "
        "(another catalogue's categories) predicts ones it lacks, which never filter the search",
    )


class RegionResults(BaseModel):
    box: list[float] = Field(description="the region, `[x0, y0, x1, y1]` as asked")
    results: list[Result]
    predicted_category: PredictedCategory | None = Field(None, description="only with category=auto")


class SearchResults(BaseModel):
    results: list[Result] = Field(description="the look-alikes, best first (empty with `boxes`: see `regions`)")
    took_ms: float
    predicted_category: PredictedCategory | None = Field(None, description="only with category=auto")
    regions: list[RegionResults] | None = Field(None, description="only with `boxes`: one entry per box, in order")


class BatchEntry(BaseModel):
    id: str
    results: list[Result] | None = Field(None, description="absent when the entry failed")
    error: ErrorDetail | None = Field(None, description="why this entry failed (the others still answer)")


class BatchResults(BaseModel):
    results: list[BatchEntry] = Field(description="one entry per query, in the order asked")
    took_ms: float


class Item(BaseModel):
    id: str
    category: str
    product_id: str
    image_url: str
    metadata: dict[str, Any]
    sha256: str
    model: str = Field(description="identity of the encoder that embedded it")


class DuplicateOf(BaseModel):
    id: str = Field(description="the stored item this photo looks the same as")
    colour_similarity: float


class StoredItemResult(Item):
    """``PUT /v1/items/<id>``: the item as stored, and what it may duplicate."""

    duplicate_of: DuplicateOf | None = Field(
        None,
        description="an existing item this photo looks the same as (NEAR_DUPLICATE_* settings); absent when "
        "none. The item is stored either way",
    )


class ItemSummary(BaseModel):
    id: str
    category: str
    product_id: str
    image_url: str
    metadata: dict[str, Any]


class Deleted(BaseModel):
    id: str
    deleted: bool


class CategoryCount(BaseModel):
    name: str
    count: int


class Categories(BaseModel):
    categories: list[CategoryCount]


class RandomItems(BaseModel):
    items: list[ItemSummary]


class Health(BaseModel):
    status: str


class Calibration(BaseModel):
    """Leave-one-out P@4 and mAP@R of the collection's own items at each colour weight."""

    colour_weight: float = Field(description="the weight with the best P@4, used by default")
    p_at_4: dict[str, float] = Field(description="colour weight -> P@4 (0 = embedding alone, 1 = colour alone)")
    map_at_r: dict[str, float] = Field(description="colour weight -> mAP@R")
    queries: int
    gallery: int
    seconds: float


class Ready(BaseModel):
    status: str
    collection: str
    serving: str
    items: int
    model: str
    device: str = Field(description="where the encoder runs, e.g. cpu or cuda:0 (DEVICE)")
    precision: str = Field(description="the encoder's precision there: fp32 or bf16 (PRECISION)")
    colour_weight: float = Field(description="the colour weight of searches that give none")
    random_weights: bool = Field(
        description="true: the encoder has untrained weights (no MODEL_PRETRAINED, no MODEL_CHECKPOINT), so "
        "results show the pipeline, not visual similarity"
    )
    calibration: Calibration | None = Field(
        None, description="the weights measured on this collection by ingest (null: not calibrated)"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class RecommendImages(BaseModel):
    """The optional example photos of ``POST /v1/recommend`` (multipart files, repeatable)."""

    positive_image: list[bytes] | None = Field(None, description="photos to look like")
    negative_image: list[bytes] | None = Field(None, description="photos not to look like")
