"""The model source: each kind of weights as a structure, and the labels that identities keep."""

from __future__ import annotations

import pytest

from lookalike.errors import ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.settings import Settings


def source_of(**settings) -> ModelSource:
    return ModelSource.from_settings(Settings(_env_file=None, model_checkpoint=None, **settings))


@pytest.mark.parametrize(
    ("settings", "kind", "arguments", "label"),
    [
        ({"model_name": "ViT-B-32", "model_pretrained": ""}, "random-init", ("ViT-B-32", None), "ViT-B-32/random-init"),
        (
            {"model_name": "ViT-B-32", "model_pretrained": "laion2b_s34b_b79k"},
            "tag",
            ("ViT-B-32", "laion2b_s34b_b79k"),
            "ViT-B-32/laion2b_s34b_b79k",
        ),
        (
            {"model_name": "ViT-B-32", "model_pretrained": "/weights/clip/model.safetensors"},
            "file",
            ("ViT-B-32", "/weights/clip/model.safetensors"),  # the whole path, not its basename
            "ViT-B-32/model.safetensors",
        ),
        (
            {"model_name": "ViT-B-32", "model_pretrained": "hf-hub:org/repo"},
            "hf-hub",
            ("hf-hub:org/repo", None),
            "hf-hub:org/repo",  # not model "hf-hub:org" with weights "repo"
        ),
    ],
)
def test_each_kind_of_weights_keeps_what_rebuilds_it(settings, kind, arguments, label):
    source = source_of(**settings)
    assert (source.kind, source.open_clip_arguments, source.label) == (kind, arguments, label)
    assert ModelSource.from_dict(source.to_dict()) == source


def test_a_checkpoint_source_nests_its_base_and_round_trips():
    base = ModelSource("hf-hub", "org/repo")
    tuned = ModelSource("checkpoint", "/models/shop-v2", base=ModelSource("checkpoint", "/models/shop-v1", base=base))
    assert tuned.label == "checkpoint:shop-v2" and tuned.short_name == "shop-v2"
    assert tuned.open_clip_arguments == ("local-dir:/models/shop-v2", None)
    assert ModelSource.from_dict(tuned.to_dict()) == tuned


def test_a_folder_that_is_no_checkpoint_is_refused_in_words(tmp_path):
    with pytest.raises(ModelLoadError, match="python -m finetune"):
        ModelSource.from_settings(Settings(_env_file=None, model_checkpoint=tmp_path))
