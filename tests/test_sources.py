"""Dataset lookup order, downloads from a local HTTP server, verification, and `mnistlab data`."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    closed_port_url,
    http_server,
    register,
    tiny_arrays,
    tiny_info,
    write_files,
)

from mnistlab.cli.main import main
from mnistlab.data import sources
from mnistlab.data.download import download_file
from mnistlab.data.idx import write_idx
from mnistlab.data.sources import locate, search_dirs, verify
from mnistlab.errors import DataError


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated lookup places: env dir, cache and system root under tmp_path."""
    roots = {k: tmp_path / k for k in ("given", "env", "xdg", "system")}
    for d in roots.values():
        d.mkdir()
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(roots["env"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(roots["xdg"]))
    monkeypatch.setattr(sources, "SYSTEM_DATA_ROOT", roots["system"])
    return roots


@pytest.fixture
def tiny(monkeypatch):
    arrays = tiny_arrays()
    return register(monkeypatch, tiny_info("tiny", arrays)), arrays


def test_search_dirs_order(env):
    cache = env["xdg"] / "mnistlab" / "datasets" / "tiny"
    assert search_dirs("tiny", env["given"]) == [
        env["given"], env["given"] / "tiny", env["env"] / "tiny", cache, env["system"] / "tiny",
    ]
    assert search_dirs("tiny") == [env["env"] / "tiny", cache, env["system"] / "tiny"]


def test_search_dirs_without_env(env, monkeypatch, tmp_path):
    monkeypatch.delenv("MNISTLAB_DATA_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_dirs("x") == [tmp_path / "home" / ".cache" / "mnistlab" / "datasets" / "x", env["system"] / "x"]


def test_lookup_order(env, tiny):
    info, arrays = tiny
    places = [
        env["given"] / "tiny",
        env["env"] / "tiny",
        env["xdg"] / "mnistlab" / "datasets" / "tiny",
        env["system"] / "tiny",
    ]
    for i, place in enumerate(places):
        write_files(place, info, arrays, gz=i % 2 == 0)  # raw and gzip both accepted
    for place in places:
        found = locate("tiny", env["given"], download=False)
        assert set(found) == {"train_images", "train_labels", "test_images", "test_labels"}
        assert {p.parent for p in found.values()} == {place}
        # remove one file: an incomplete folder is passed over for the next one
        sorted(place.iterdir())[0].unlink()
    with pytest.raises(DataError) as err:
        locate("tiny", env["given"], download=False)
    message = str(err.value)
    for place in places:
        assert str(place) in message
    assert "lacks" in message and "MNISTLAB_DATA_DIR" in message and "--data-dir" in message
    assert "mnistlab data download tiny" in message


def test_data_dir_may_be_the_dataset_folder_itself(env, tiny):
    info, arrays = tiny
    write_files(env["given"], info, arrays)
    assert locate("tiny", env["given"], download=False)["train_images"].parent == env["given"]


def test_download_good(env, tiny, tmp_path, monkeypatch):
    info, arrays = tiny
    served = write_files(tmp_path / "www", info, arrays)
    with http_server(served) as url:
        register(monkeypatch, replace(info, mirrors=(url,)))
        found = locate("tiny", progress=False)
    cache = env["xdg"] / "mnistlab" / "datasets" / "tiny"
    assert {p.parent for p in found.values()} == {cache}
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{f.filename}.gz" for f in info.files.values())
    assert [status for _, status in verify("tiny")] == ["ok"] * 4


def test_download_checksum_mismatch_leaves_nothing(env, tiny, tmp_path, monkeypatch):
    info, arrays = tiny
    served = write_files(tmp_path / "www", info, arrays)
    write_idx(served / "train-images-idx3-ubyte.gz", arrays["train_images"][::-1].copy())  # tampered
    with http_server(served) as url:
        register(monkeypatch, replace(info, mirrors=(url,)))
        with pytest.raises(DataError) as err:
            locate("tiny", progress=False)
    message = str(err.value)
    assert f"{url}train-images-idx3-ubyte.gz (checksum mismatch (expected {info.files['train_images'].md5}" in message
    cache = env["xdg"] / "mnistlab" / "datasets" / "tiny"
    assert list(cache.iterdir()) == []  # no half or bad file, no .part


def test_download_connection_refused(env, tiny, monkeypatch):
    info, _ = tiny
    dead = closed_port_url()
    register(monkeypatch, replace(info, mirrors=(dead,)))
    with pytest.raises(DataError) as err:
        locate("tiny", progress=False)
    message = str(err.value)
    assert f"{dead}train-images-idx3-ubyte.gz (connection refused)" in message
    assert str(env["env"] / "tiny") in message and str(env["system"] / "tiny") in message
    assert "set MNISTLAB_DATA_DIR" in message and "mnistlab data download tiny" in message


def test_fashion_error_suggests_debian_package(env):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        locate("fashion-mnist", download=False)


def test_download_falls_back_to_second_mirror(env, tiny, tmp_path, monkeypatch):
    info, arrays = tiny
    write_files(tmp_path / "www" / "good", info, arrays)
    (tmp_path / "www" / "empty").mkdir()
    with http_server(tmp_path / "www") as url:
        mirrors = (closed_port_url(), f"{url}empty/", f"{url}good/")
        register(monkeypatch, replace(info, mirrors=mirrors))
        found = locate("tiny", progress=False)
    assert found["test_labels"].name == "t10k-labels-idx1-ubyte.gz"
    assert [s for _, s in verify("tiny")] == ["ok"] * 4


def test_download_file_direct(tmp_path):
    www = tmp_path / "www"
    array = np.arange(100, dtype=np.uint8)
    write_idx(www / "a.gz", array)
    from mnistlab.data.idx import decompressed_md5

    good_md5 = decompressed_md5(www / "a.gz")
    dest = tmp_path / "out" / "a.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with http_server(www) as url:
        with pytest.raises(DataError, match="checksum mismatch"):
            download_file(url + "a.gz", dest, md5="0" * 32, progress=False)
        assert dest.read_bytes() == b"old"  # the existing file is untouched
        with pytest.raises(DataError, match="HTTP 404"):
            download_file(url + "missing.gz", dest, md5=None, progress=False)
        assert sorted(p.name for p in dest.parent.iterdir()) == ["a.gz"]
        download_file(url + "a.gz", dest, md5=good_md5, progress=False)
    assert dest.read_bytes() == (www / "a.gz").read_bytes()


def test_download_from_zip_archive_shared_by_datasets(env, monkeypatch, tmp_path):
    """EMNIST-style: no per-file mirror, one zip holding several datasets' .gz files."""
    a_arrays, b_arrays = tiny_arrays(1), tiny_arrays(2)
    names_a = tuple(f"ea-{n}" for n in ("train-images", "train-labels", "test-images", "test-labels"))
    names_b = tuple(f"eb-{n}" for n in ("train-images", "train-labels", "test-images", "test-labels"))
    a = tiny_info("ea", a_arrays, names=names_a, checksums=False)
    b = tiny_info("eb", b_arrays, names=names_b)
    staging = tmp_path / "staging"
    write_files(staging, a, a_arrays)
    write_files(staging, b, b_arrays)
    (tmp_path / "www").mkdir()
    with zipfile.ZipFile(tmp_path / "www" / "gzip.zip", "w") as zf:
        for f in sorted(staging.iterdir()):
            zf.write(f, f"gzip/{f.name}")
    with http_server(tmp_path / "www") as url:
        archives = (closed_port_url() + "gzip.zip", url + "gzip.zip")
        register(monkeypatch, replace(a, archives=archives))
        register(monkeypatch, replace(b, archives=archives))
        locate("ea", progress=False)
    cache = env["xdg"] / "mnistlab" / "datasets"
    assert [s for _, s in verify("ea")] == ["no checksum known"] * 4
    assert [s for _, s in verify("eb")] == ["ok"] * 4  # unpacked from the same download
    assert not (cache / "_archives" / "gzip.zip").exists()


def test_verify_reports_each_fault(env, tiny, monkeypatch):
    info, arrays = tiny
    folder = write_files(env["env"] / "tiny", info, arrays)
    write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["train_labels"][::-1].copy())  # same shape, other bytes
    write_idx(folder / "t10k-images-idx3-ubyte.gz", arrays["test_images"][:5])  # wrong count
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    status = [s for _, s in verify("tiny")]
    assert status[0] == "ok"
    assert status[1].startswith("checksum mismatch (expected ")
    assert status[2] == f"unexpected shape (5, 28, 28), expected ({info.test_size}, 28, 28)"
    assert status[3].startswith("corrupt: ") and "not a valid gzip file" in status[3]
    register(monkeypatch, replace(info, files={k: replace(f, md5=None) for k, f in info.files.items()}))
    assert [s for _, s in verify("tiny")][0] == "no checksum known"


def test_label_table_shape_checked(env, monkeypatch):
    arrays = tiny_arrays()
    for split in ("train", "test"):
        n = len(arrays[f"{split}_labels"])
        table = np.zeros((n, 8), np.int32)
        table[:, 0] = arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = table
    info = register(monkeypatch, tiny_info("q", arrays, label_column=0))
    write_files(env["env"] / "q", info, arrays)
    assert [s for _, s in verify("q")] == ["ok"] * 4


def test_cli_data_verbs(env, tiny, capsys, tmp_path):
    info, arrays = tiny
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "emnist-letters" in out and "not found" in out
    assert main(["data", "info", "tiny"]) == 0
    assert "a tiny test dataset" in capsys.readouterr().out
    assert main(["data", "verify", "tiny"]) == 2  # not found: a DataError, printed on one line
    assert "dataset 'tiny' not found" in capsys.readouterr().err
    folder = write_files(tmp_path / "mine" / "tiny", info, arrays)
    assert main(["data", "verify", "tiny", "--data-dir", str(tmp_path / "mine")]) == 0
    assert "all 4 files ok" in capsys.readouterr().out
    write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["train_labels"][::-1].copy())
    assert main(["data", "verify", "tiny", "--data-dir", str(folder)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
    assert main(["data", "download", "tiny", "--data-dir", str(folder)]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["data", "info", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_cli_download(env, tiny, tmp_path, monkeypatch, capsys):
    info, arrays = tiny
    with http_server(write_files(tmp_path / "www", info, arrays)) as url:
        register(monkeypatch, replace(info, mirrors=(url,)))
        assert main(["data", "download", "tiny", "--quiet"]) == 0
    assert "downloaded and verified" in capsys.readouterr().out


@pytest.mark.real_data
def test_real_mnist_verifies(real_data_dir: Path):
    results = verify("mnist", real_data_dir)
    assert [status for _, status in results] == ["ok"] * 4
