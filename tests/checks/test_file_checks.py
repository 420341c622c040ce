"""The per-file check: what it finds, and that a file is only read again when it changed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from tests.bad_corpus import write_awkward_files, write_bad_files
from tests.helpers import make_folder

from lit_convnext.checks import file_checks
from lit_convnext.checks.check_cache import CheckCache
from lit_convnext.checks.file_checks import check_file, inspect_files
from lit_convnext.data.images import load_rgb


def test_second_check_of_unchanged_files_reads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "data", 3)
    write_bad_files(folder / "red")
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    first = inspect_files(paths, workers=1)
    checked: list[str] = []
    original = file_checks._check

    def counting(path: str, *args) -> tuple[file_checks.FileCheck, int, int]:
        checked.append(path)
        return original(path, *args)

    monkeypatch.setattr(file_checks, "_check", counting)
    assert inspect_files(paths, workers=1) == first and checked == []
    assert inspect_files(paths, workers=1, header_only=True) == first and checked == []  # a decode answers both

    changed = folder / "red" / "img0.png"
    changed.write_bytes((folder / "red" / "bmp_palette_too_long.bmp").read_bytes())  # new size and mtime
    again = inspect_files(paths, workers=1)
    assert checked == [str(changed)]
    assert again[paths.index(str(changed))].error and "palette" in again[paths.index(str(changed))].error

    checked.clear()
    inspect_files(paths, workers=1, cache=False)
    assert len(checked) == len(paths)


def test_header_only_results_do_not_answer_a_decoding_check(tmp_path: Path) -> None:
    write_bad_files(tmp_path / "f")
    path = str(tmp_path / "f" / "bmp_palette_too_long.bmp")
    assert inspect_files([path], header_only=True, workers=1)[0].error is None  # headers are fine
    assert "palette" in inspect_files([path], workers=1)[0].error  # so the decode still runs


def test_parallel_workers_and_cache_give_the_serial_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "data", 60)  # enough files for several chunks per worker
    write_bad_files(folder / "red")
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    serial = inspect_files(paths, workers=1, cache=False)
    assert any(c.error for c in serial) and any(c.error is None for c in serial)
    pools: list[int] = []
    real_pool = file_checks.ProcessPoolExecutor
    monkeypatch.setattr(file_checks, "ProcessPoolExecutor", lambda max_workers: pools.append(max_workers) or
                        real_pool(max_workers=max_workers))
    assert inspect_files(paths, workers=2, cache=False) == serial  # worker processes
    assert inspect_files(paths, workers=2) == serial  # first run: checked in workers, then stored
    assert inspect_files(paths, workers=2) == serial  # repeat run: every answer from the cache
    assert pools == [2, 2, 2]
    assert inspect_files(paths[:10], workers=2) == serial[:10] and len(pools) == 3  # a few files: no processes


def test_a_cached_result_is_the_check_itself(tmp_path: Path) -> None:
    """Every field comes back from the cache as the check made it: conversions and Pillow's notes, flags as
    booleans (the JSON report writes them), missing values as None, bad files with their reason."""
    write_bad_files(tmp_path / "files")
    write_awkward_files(tmp_path / "files")
    paths = sorted(str(p) for p in (tmp_path / "files").iterdir())
    first = inspect_files(paths, workers=1)
    assert any(c.notes for c in first) and any(c.error for c in first) and any(c.wrong_extension for c in first)
    assert any(c.exif_rotated for c in first) and any(c.frames > 1 for c in first)
    assert any(len(c.conversions) > 1 for c in first) and any(c.format is None for c in first)
    cached = inspect_files(paths, workers=1)
    assert cached == first
    for again, check in zip(cached, first):
        assert [type(getattr(again, f)) for f in file_checks.STORED_FIELDS] == \
               [type(getattr(check, f)) for f in file_checks.STORED_FIELDS]


def test_cache_lookup_finds_exactly_the_paths_asked_for(tmp_path: Path) -> None:
    """Rows are fetched by a range over the folder the paths share: neighbours with a common prefix stay out."""
    cache = CheckCache(("name", "flag"), tmp_path / "cache")
    rows = {str(tmp_path / name): (len(name), 1, (name, None))
            for name in ("cats/a.png", "cats2/b.png", "cats-x/c.png", "cats/deep/d.png", "other/e.png")}
    cache.store([(path, *row) for path, row in rows.items()], header_only=False)
    cats = [str(tmp_path / "cats/a.png"), str(tmp_path / "cats/deep/d.png")]
    assert cache.lookup(cats, header_only=False) == {path: rows[path] for path in cats}
    spread = [str(tmp_path / "cats2/b.png"), str(tmp_path / "other/e.png")]  # as a label file may list them
    assert cache.lookup(spread, header_only=True) == {path: rows[path] for path in spread}
    single = [str(tmp_path / "cats-x/c.png")]
    assert cache.lookup(single, header_only=False) == {single[0]: rows[single[0]]}
    assert cache.lookup([str(tmp_path / "cats/missing.png")], header_only=False) == {}
    # Paths without a common folder (here absolute and relative; on Windows, two drives): every row is read.
    assert cache.lookup([cats[0], "relative/a.png"], header_only=False) == {cats[0]: rows[cats[0]]}
    cache.close()


def test_a_file_that_cannot_be_stat_ed_or_read_is_a_bad_file_and_not_remembered(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.png")
    first = inspect_files([missing], workers=1)[0]
    assert first.error and first.error.startswith("cannot read file")
    cache = CheckCache(file_checks.STORED_FIELDS)
    assert cache.lookup([missing], header_only=True) == {}
    cache.close()


def test_a_folder_named_like_an_image_is_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    assert inspect_files([str(tmp_path / "folder.png")], workers=1)[0].error == (
        "cannot read file: a folder, not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists() or not hasattr(signal, "alarm"),
                    reason="needs named pipes, /dev/zero and signal.alarm (Unix)")
def test_a_pipe_or_a_device_named_like_an_image_is_a_bad_file_found_at_once(tmp_path: Path) -> None:
    """A named pipe made the check wait for a writer, and a link to /dev/zero read without end; so did the loader."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    make_folder(tmp_path / "data", 1)
    good = next(str(p) for p in (tmp_path / "data").rglob("*.png"))

    class StillWaiting(Exception):  # not an OSError: the check must not take it for the file's own error
        pass

    def hung(*_: object) -> None:
        raise StillWaiting("still waiting on a special file after 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        checks = inspect_files([str(tmp_path / "pipe.png"), str(tmp_path / "zero.png"), good], workers=1, cache=False)
        with pytest.raises(OSError, match="^a named pipe, not a regular file$"):
            load_rgb(tmp_path / "pipe.png")  # the loader's path (predict, or fit without the check)
        with pytest.raises(OSError, match="^a device, not a regular file$"):
            load_rgb(str(tmp_path / "zero.png"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [c.error for c in checks] == ["cannot read file: a named pipe, not a regular file",
                                         "cannot read file: a device, not a regular file", None]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc/self/fd (Linux)")
def test_files_opened_ahead_of_their_check_are_all_closed(tmp_path: Path) -> None:
    """A worker opens files ahead of their check (read-ahead): the answers are those of checking each file alone,
    and no descriptor stays open: checked, unopenable (missing, a folder) or never reached (a stopped task)."""
    folder = make_folder(tmp_path / "data", 30)
    write_bad_files(folder / "red")
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file()) + [str(tmp_path / "gone.png"), str(folder)]
    assert len(paths) > 2 * file_checks.READ_AHEAD
    before = sorted(os.listdir("/proc/self/fd"))
    answers = file_checks._check_jobs([(path, -1, -1) for path in paths], header_only=False)
    assert [answer[2] for answer in answers] == [file_checks._stored_values(check_file(path)) for path in paths]
    assert answers[-2][2][0].startswith("cannot read file") and answers[-1][2][0].startswith("cannot read file")
    assert sorted(os.listdir("/proc/self/fd")) == before

    files = file_checks._opened_ahead(paths)
    path, fd = next(files)
    assert path == paths[0] and os.read(fd, 8) == Path(path).read_bytes()[:8]
    os.close(fd)
    files.close()  # a task stopped after one file: the files opened ahead are closed
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_read_returns_the_whole_file_with_the_stat_taken_when_it_was_opened(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 9000)  # larger than one buffer
    data, size, mtime_ns = file_checks._read(str(path))
    assert data == path.read_bytes() and size == len(data) and mtime_ns == path.stat().st_mtime_ns


@pytest.mark.parametrize("path", ["a/b.png", "b.png", "./a/b.png", "../q/r.png", "a//b.png", "a/./b.png", "a/../b.png",
                                  "/b.png", "//b.png", "/x/y/z.png", "a/b/..", "a/.", "x/", "a/b/", "~/b.png"])
def test_absolute_paths_are_those_of_abspath(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is keyed by absolute path; the per-folder shortcut must give exactly ``os.path.abspath``."""
    monkeypatch.chdir(tmp_path)
    assert file_checks._absolute_paths([path, path]) == [os.path.abspath(path)] * 2


@pytest.mark.parametrize("orientation_in", ["xmp", "exif"])
def test_orientation_is_read_where_the_loader_reads_it(tmp_path: Path, orientation_in: str) -> None:
    """An orientation in a PNG's XMP packet or EXIF chunk rotates the image in training: the check says so and
    reports the upright size; a plain PNG is not rotated."""
    path = tmp_path / f"{orientation_in}.png"
    info = PngImagePlugin.PngInfo()
    extra = {}
    if orientation_in == "xmp":
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    else:
        exif = Image.Exif()
        exif[file_checks.ORIENTATION_TAG] = 6
        extra["exif"] = exif.tobytes()
    Image.new("RGB", (40, 20), (10, 120, 200)).save(path, pnginfo=info, **extra)
    assert load_rgb(path).size == (20, 40)
    check = check_file(path)
    assert check.error is None and check.exif_rotated and (check.width, check.height) == (20, 40)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 20)).save(plain)
    assert not check_file(plain).exif_rotated and (check_file(plain).width, check_file(plain).height) == (40, 20)



def test_cache_queries_grow_with_batches_not_with_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of a million files costs one cache lookup per batch added and one write per STORE_BATCH results:
    a query per file (or a re-read per batch) would make the check grow faster than the folder."""
    folder = make_folder(tmp_path / "data", 20)  # 60 files in 3 class folders
    batches = [sorted(str(p) for p in (folder / name).iterdir()) for name in ("red", "green", "blue")]
    calls: dict[str, list[int]] = {"lookup": [], "store": []}
    lookup, store = CheckCache.lookup, CheckCache.store

    def counted_lookup(self: CheckCache, paths: list[str], header_only: bool) -> dict:
        calls["lookup"].append(len(paths))
        return lookup(self, paths, header_only)

    def counted_store(self: CheckCache, entries: list, header_only: bool) -> None:
        entries = list(entries)
        calls["store"].append(len(entries))
        store(self, entries, header_only)

    monkeypatch.setattr(CheckCache, "lookup", counted_lookup)
    monkeypatch.setattr(CheckCache, "store", counted_store)
    monkeypatch.setattr(file_checks, "STORE_BATCH", 25)
    with file_checks.FileChecker(workers=1) as checker:
        for batch in batches:
            checker.add(batch)
        results = checker.results()
    assert [r.path for r in results] == [p for batch in batches for p in batch] and not any(r.error for r in results)
    assert calls["lookup"] == [20, 20, 20]
    assert sum(calls["store"]) == 60 and len(calls["store"]) <= 60 // 25 + 1
