"""The contact sheet: ORIGINAL plus k RECOMMENDED tiles, by item id or by image file."""

from __future__ import annotations

from PIL import Image

from ingest.pipeline import IngestOptions, ingest
from ingest.report import ErrorReport
from lookalike.catalogue import read_catalogue
from service.recommend import MARGIN, TILE, main


def test_contact_sheet_by_id_and_by_file(settings, encoder, catalogue_dir, tmp_path, monkeypatch, capsys):
    from lookalike.store import VectorStore

    store = VectorStore.from_settings(settings)
    store.ensure_collection(encoder.dim, encoder.identity)
    report = ErrorReport.open(tmp_path / "r.jsonl")
    ingest(read_catalogue(catalogue_dir), encoder, store, report, IngestOptions(workers=0, progress=False))
    report.close()
    store.close()  # the command opens the embedded store itself
    for name, value in {
        "QDRANT_PATH": settings.qdrant_path,
        "CATALOGUE_DIR": catalogue_dir,
        "MODEL_NAME": settings.model_name,
        "MODEL_PRETRAINED": "",
        "EMBEDDED_ENGINE": settings.embedded_engine,
    }.items():
        monkeypatch.setenv(name, str(value))

    by_id = tmp_path / "by_id.png"
    assert main(["blue_bar-item0", "--category", "blue_bar", "-k", "3", "-o", str(by_id)]) == 0
    assert Image.open(by_id).size[0] == MARGIN + 4 * (TILE + MARGIN)

    by_file = tmp_path / "by_file.png"
    assert main([str(catalogue_dir / "red_round/item1.jpg"), "-o", str(by_file)]) == 0
    assert Image.open(by_file).size[0] == MARGIN + 5 * (TILE + MARGIN)

    assert main(["no-such-item", "-o", str(tmp_path / "x.png")]) == 2
    assert "no item with id" in capsys.readouterr().err
    # an output it cannot write, or of no image format: one line, not a traceback
    (tmp_path / "a-file").write_text("")
    for output in (tmp_path / "a-file" / "x.png", tmp_path / "sheet.unknown"):
        assert main(["blue_bar-item0", "-o", str(output)]) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"recommend: error: cannot write {output}: ")


def test_contact_sheet_through_the_api_says_what_went_wrong(tmp_path, capsys, monkeypatch):
    import httpx

    from service import recommend

    def answer(request: httpx.Request) -> httpx.Response:
        error = {"error": {"code": "item_not_found", "message": "no item with id 'nope'"}}
        return httpx.Response(404, json=error)

    real_client = httpx.Client
    monkeypatch.setattr(
        recommend.httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(answer), **kw)
    )
    assert main(["nope", "--api", "http://api", "-o", str(tmp_path / "x.png")]) == 2
    assert "404: no item with id 'nope'" in capsys.readouterr().err
    assert main(["photos/missing.jpg", "--api", "http://api", "-o", str(tmp_path / "x.png")]) == 2
    assert "no such file" in capsys.readouterr().err
