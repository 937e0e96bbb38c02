"""Settings come from the environment under the contract's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.errors import InvalidRequest
from lookalike.settings import Settings


def test_contract_env_names(monkeypatch, tmp_path: Path):
    env = {
        "QDRANT_URL": "http://qdrant:6333",
        "QDRANT_PATH": str(tmp_path / "q"),
        "QDRANT_API_KEY": "s3cret",
        "COLLECTION": "shop",
        "CATALOGUE_DIR": str(tmp_path),
        "MODEL_NAME": "RN50",
        "MODEL_PRETRAINED": "openai",
        "MODEL_CHECKPOINT": str(tmp_path / "ckpt"),
        "API_KEY": "k",
        "FILTERABLE_FIELDS": "brand, colour",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.qdrant_url == "http://qdrant:6333" and not settings.embedded
    assert settings.qdrant_path == tmp_path / "q"
    assert settings.qdrant_api_key.get_secret_value() == "s3cret"
    assert (settings.collection, settings.model_name, settings.model_pretrained) == ("shop", "RN50", "openai")
    assert settings.catalogue_dir == tmp_path and settings.model_checkpoint == tmp_path / "ckpt"
    assert settings.api_key.get_secret_value() == "k"
    assert settings.filterable_fields == ["brand", "colour"]
    assert "s3cret" not in repr(settings)


def test_empty_values_mean_unset(monkeypatch):
    for name in ("QDRANT_URL", "QDRANT_API_KEY", "MODEL_CHECKPOINT", "API_KEY"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.embedded
    assert settings.api_key is None and settings.qdrant_api_key is None and settings.model_checkpoint is None


def test_keys_and_the_server_url_read_from_a_secret_file_lose_its_line_end(monkeypatch):
    monkeypatch.setenv("API_KEY", "s3cret\n")  # a Kubernetes secret made with `echo`
    monkeypatch.setenv("QDRANT_API_KEY", " q-key\r\n")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333\n")
    settings = Settings()
    assert settings.api_key.get_secret_value() == "s3cret"
    assert settings.qdrant_api_key.get_secret_value() == "q-key"
    assert settings.qdrant_url == "http://qdrant:6333"


@pytest.mark.parametrize("url", ["qdrant:6333", "10.0.0.5:6333", "grpc://qdrant:6334"])
def test_a_server_url_without_its_scheme_is_refused_saying_how_to_write_it(monkeypatch, url):
    monkeypatch.setenv("QDRANT_URL", url)
    host = url.split("://")[-1]
    with pytest.raises(InvalidRequest) as refused:
        Settings.from_env()
    assert (
        refused.value.message
        == f"invalid setting: QDRANT_URL={url!r}: give the server's URL with its scheme, e.g. http://{host}"
    )
    for accepted in ("http://qdrant:6333", "https://x.cloud.qdrant.io", "localhost"):  # a bare host: qdrant-client's
        monkeypatch.setenv("QDRANT_URL", accepted)
        assert Settings.from_env().qdrant_url == accepted


def test_defaults(monkeypatch):
    for name in ("QDRANT_URL", "QDRANT_PATH", "COLLECTION", "MODEL_PRETRAINED", "MODEL_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.embedded and settings.qdrant_path == Path("data/qdrant")
    assert settings.collection == "products"
    assert settings.pretrained == "laion2b_s34b_b79k"  # real weights by default: MODEL_PRETRAINED= is offline


def test_unset_pretrained_means_the_architectures_default_and_empty_means_random(monkeypatch):
    from lookalike.model_source import ModelSource

    monkeypatch.delenv("MODEL_PRETRAINED", raising=False)
    assert ModelSource.from_settings(Settings(model_name="ViT-B-32")).weights == "laion2b_s34b_b79k"
    assert ModelSource.from_settings(Settings(model_name="lookalike-small")).random_init  # no default weights
    monkeypatch.setenv("MODEL_PRETRAINED", "")
    assert ModelSource.from_settings(Settings(model_name="ViT-B-32")).random_init


def test_missing_catalogue_setting_says_what_to_set():
    import pytest

    from lookalike.errors import CatalogueError

    with pytest.raises(CatalogueError, match="CATALOGUE_DIR"):
        Settings(catalogue_dir=None).catalogue_source()


def test_overrides_keep_track_of_what_was_set():
    settings = Settings(_env_file=None).with_overrides(batch_size=7)
    assert "batch_size" in settings.model_fields_set and "colour_weight" not in settings.model_fields_set


def test_a_bad_variable_is_named_with_its_value_and_a_secret_is_not_shown(monkeypatch):
    import pytest

    from lookalike.errors import InvalidRequest

    monkeypatch.setenv("MAX_IMAGE_PIXELS", "-5")
    monkeypatch.setenv("FILTERABLE_FIELDS", "brand,b@d")
    with pytest.raises(InvalidRequest) as raised:
        Settings.from_env()
    assert "MAX_IMAGE_PIXELS='-5': Input should be greater than or equal to 1" in raised.value.message
    assert "FILTERABLE_FIELDS[1]='b@d'" in raised.value.message
    assert Settings._shown(("api_key",), "s3cret") == "API_KEY=<hidden>"
    assert Settings._shown(("qdrant_api_key",), "s3cret") == "QDRANT_API_KEY=<hidden>"


def test_every_entry_point_stops_on_a_bad_variable_in_one_line(monkeypatch, capsys, tmp_path):
    """Each printed pydantic's traceback (gunicorn: "Failed to read config file" and one)."""
    import runpy

    import pytest

    from finetune.__main__ import main as finetune_main
    from finetune.evaluate import main as evaluate_main
    from finetune.export import main as export_main
    from ingest.__main__ import main as ingest_main

    monkeypatch.setenv("DEVICE", "tpu")
    for name, main in (("ingest", ingest_main), ("finetune", finetune_main), ("evaluate", evaluate_main)):
        assert main([str(tmp_path)]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"{name}: error: invalid setting: DEVICE='tpu': " + (
            "String should match pattern '^(auto|cpu|cuda(:[0-9]{1,2})?)$'"
        )
    assert export_main([]) == 2 and "DEVICE='tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(Path(__file__).parent.parent / "service" / "gunicorn.conf.py"))
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("lookalike: error: invalid setting: DEVICE='tpu'")


def test_gunicorns_knobs_and_the_log_level_are_validated_settings(monkeypatch, capsys, tmp_path):
    """THREADS=abc and LOG_LEVEL=verbose were tracebacks (gunicorn's config, logging.setLevel)."""
    import runpy

    import pytest

    monkeypatch.setenv("THREADS", "8")
    monkeypatch.setenv("TIMEOUT", "300")
    monkeypatch.setenv("BIND", "0.0.0.0:9000")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")  # a server: WEB_CONCURRENCY workers
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # else the config sets it for the whole run
    config = runpy.run_path(str(Path(__file__).parent.parent / "service" / "gunicorn.conf.py"))
    assert (config["threads"], config["timeout"], config["bind"], config["workers"]) == (8, 300, "0.0.0.0:9000", 3)
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert Settings.from_env().log_level == "debug"
    for name, value in (("THREADS", "abc"), ("WEB_CONCURRENCY", "0"), ("LOG_LEVEL", "verbose")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit):
            runpy.run_path(str(Path(__file__).parent.parent / "service" / "gunicorn.conf.py"))
        assert f"invalid setting: {name}='{value}'" in capsys.readouterr().err
        monkeypatch.delenv(name)


def test_the_metrics_folder_gunicorns_config_makes_is_removed_at_exit_and_none_is_made_when_given(
    monkeypatch, tmp_path
):
    """Several workers share their metrics in files (PROMETHEUS_MULTIPROC_DIR): every start made
    a folder in /tmp that nothing removed, also when the operator had given one."""
    import runpy
    import tempfile

    config_file = str(Path(__file__).parent.parent / "service" / "gunicorn.conf.py")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes folders
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")  # a server: several workers
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "given"))
    monkeypatch.delenv("LOOKALIKE_OWN_METRICS_DIR", raising=False)
    runpy.run_path(config_file)["on_exit"](None)
    assert list(tmp_path.iterdir()) == []  # none made, and the given one (never made here) left alone

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    config = runpy.run_path(config_file)
    made = Path(config["os"].environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.parent == tmp_path and made.is_dir()
    runpy.run_path(config_file)  # a reload (HUP) reads the config again: the same folder
    assert list(tmp_path.iterdir()) == [made]
    config["on_exit"](None)
    assert not made.exists()
