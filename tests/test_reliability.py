"""Reliability: malformed parameters are a 4xx, nonsense settings exit 2 before any work,
a run killed before its first checkpoint resumes, and the messages of the edge cases."""

from __future__ import annotations

import pytest

from mnistlab.cli.main import main


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- HTTP parameters ---------------------------------------------------------------------------

BAD_TOP_K = ["%C2%B2", "%D9%A3", "1%C2%B2", "8" * 8000, "0", "1001", "-1", "1.5", "1e3", "", "%00", "%2B5", "0x10",
             "%F0%9F%98%80", "%FF"]


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi")
    from deploy_helpers import tiny_artifact
    from fastapi.testclient import TestClient

    from mnistlab.serve import Settings, create_app

    with TestClient(create_app(Settings(model=str(tiny_artifact()), threads=1)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def seven() -> bytes:
    from deploy_helpers import digit_image, png_bytes

    return png_bytes(digit_image("7"))


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("value", BAD_TOP_K, ids=[v[:12] for v in BAD_TOP_K])
def test_a_malformed_top_k_is_a_422_never_a_500(client, seven, path, value):
    field = "file" if path == "/predict" else "files"
    r = client.post(f"{path}?top_k={value}", files={field: ("a.png", seven)})
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert message.startswith("top_k must be an integer from 1 to 1000") and len(message) < 120


@pytest.mark.parametrize("value", ["maybe", "%C2%B2", "t" * 5000, "%FF"])
def test_a_malformed_preview_is_a_422(client, seven, value):
    r = client.post(f"/predict?preview={value}", files={"file": ("a.png", seven)})
    assert r.status_code == 422 and r.json()["error"].startswith("preview must be true or false")


@pytest.mark.parametrize("query, k", [("top_k=5", 5), ("top_k=%205", 5), ("top_k=0005", 5), ("top_k=1000", 10)])
def test_well_formed_top_k_still_works(client, seven, query, k):
    r = client.post(f"/predict?{query}&preview=ON", files={"file": ("a.png", seven)})
    assert r.status_code == 200 and len(r.json()["top_k"]) == k and "preview" in r.json()


def test_param_parsers_read_any_mapping():
    pytest.importorskip("fastapi")
    from mnistlab.serve.payload import PayloadError, bool_param, int_param

    assert int_param({}, "n", 1, 9) is None and int_param({"n": "9"}, "n", 1, 9) == 9
    assert bool_param({"b": "Yes"}, "b") is True and bool_param({}, "b", default=True) is True
    for raw in ("²", "١", "9" * 5000, "10"):
        with pytest.raises(PayloadError) as e:
            int_param({"n": raw}, "n", 1, 9)
        assert e.value.status == 422
