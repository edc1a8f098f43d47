"""A take's files written on the writer's thread: the engine-side counts are right at once, the disk work lands in
order, `finalized` comes only once the files are whole, and a disk that refuses a file fails that take alone."""

import json
import os
import threading

import numpy as np
import pytest
import soundfile as sf

from segue.daemon.takes import TakeFiles, TakeWriter, lock_folder
from segue.models.errors import SegueError


@pytest.fixture
def writer(tmp_path):
    w = TakeWriter(tmp_path)
    yield w
    w.close()


def _chunks(n: int, size: int, channels: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((size, channels)).astype(np.float32) * 0.1 for _ in range(n)]


def test_the_files_land_in_order_after_the_writer_was_held_and_finalized_comes_last(tmp_path, writer):
    gate = threading.Event()
    writer.submit(gate.wait)  # a disk that does not answer for a while
    files = TakeFiles(tmp_path, 5, "generate", 48000, 2, 4, dict(prompt="x"), writer=writer)
    chunks = _chunks(6, 4800)
    for i, c in enumerate(chunks):
        files.write(c, np.full((4, 5), i, np.int16))
    files.close(state="done")
    # The counts are the engine's at once; nothing is on disk yet, and the take is not final.
    assert files.samples == 6 * 4800 and files.new_frames == 30
    assert not (tmp_path / "0005-generate.wav").exists() and not files.finalized.is_set()
    gate.set()
    assert files.finalized.wait(10) and files.error is None
    pcm, sr = sf.read(tmp_path / "0005-generate.wav", dtype="float32", always_2d=True)
    assert sr == 48000
    np.testing.assert_array_equal(pcm, np.concatenate(chunks))
    codes = np.load(tmp_path / "0005-generate.codes.npy")
    assert codes.shape == (4, 30) and np.array_equal(codes[:, ::5], np.tile(np.arange(6), (4, 1)))
    meta = json.loads((tmp_path / "0005-generate.json").read_text())
    assert meta["state"] == "done" and meta["samples"] == 6 * 4800 and meta["frames"] == 30
    assert [t["id"] for t in writer.listing] == [5]  # the listing follows the sidecar


def test_a_stop_cuts_the_file_to_what_was_heard_with_its_fade(tmp_path, writer):
    files = TakeFiles(tmp_path, 1, "generate", 48000, 1, 4, dict(), writer=writer)
    chunks = [np.ones((4800, 1), np.float32) for _ in range(4)]
    for c in chunks:
        files.write(c, np.zeros((4, 5), np.int16))
    files.close((6000, 480, 8), state="stopped")
    assert files.samples == 6000 and files.new_frames == 8  # at once, before the disk work
    assert files.finalized.wait(10)
    pcm, _ = sf.read(tmp_path / "0001-generate.wav", dtype="float32")
    assert len(pcm) == 6000 and pcm[5519] == 1.0 and pcm[-1] < 0.01  # the fade over the last 480 samples
    assert np.all(np.diff(pcm[-480:]) < 0)
    assert np.load(tmp_path / "0001-generate.codes.npy").shape == (4, 8)


def test_a_file_the_disk_refuses_fails_that_take_alone(tmp_path, writer):
    (tmp_path / "0002-generate.wav").mkdir()  # the WAV's name is taken by a folder: it cannot be created
    bad = TakeFiles(tmp_path, 2, "generate", 48000, 2, 4, dict(), writer=writer)
    good = TakeFiles(tmp_path, 3, "generate", 48000, 2, 4, dict(), writer=writer)
    for f in (bad, good):
        f.write(np.zeros((480, 2), np.float32), np.zeros((4, 1), np.int16))
        f.close(state="done")
    assert bad.finalized.wait(10) and good.finalized.wait(10)  # both end: the writer goes on
    assert bad.error is not None and "creating 0002-generate" in bad.error
    assert good.error is None and sf.info(str(tmp_path / "0003-generate.wav")).frames == 480


def test_a_file_put_in_the_folder_while_the_daemon_runs_is_never_written_over(tmp_path, writer):
    """Take numbers are counted when the daemon starts; another program then writes a file of the next numbers (a
    sidecar of the same kind, a WAV of another): each of those takes fails naming the file, which stays as it was,
    and none of their files is made."""
    marker, other = tmp_path / "0007-generate.json", tmp_path / "0008-continue.wav"
    marker.write_text("MARKER")
    other.write_bytes(b"not ours")
    for n, there in ((7, marker), (8, other)):
        take = TakeFiles(tmp_path, n, "generate", 48000, 2, 4, dict(), writer=writer)
        take.write(np.zeros((480, 2), np.float32), np.zeros((4, 1), np.int16))
        take.close(state="done")
        assert take.finalized.wait(10) and there.name in take.error and "nothing was written over" in take.error
    assert marker.read_text() == "MARKER" and other.read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0007-generate.json", "0008-continue.wav"]


def test_one_takes_folder_belongs_to_one_daemon(tmp_path):
    first = lock_folder(tmp_path)
    with pytest.raises(SegueError, match=f"process {os.getpid()}.*--takes"):
        lock_folder(tmp_path)
    first.close()  # (a daemon that dies, however it dies, lets it go too)
    lock_folder(tmp_path).close()


def test_sync_waits_for_what_was_queued(tmp_path, writer):
    gate, seen = threading.Event(), []
    writer.submit(gate.wait)
    writer.submit(seen.append, 1)
    assert not writer.sync(timeout=0.2) and seen == []  # held: sync says it timed out
    gate.set()
    assert writer.sync(timeout=10) and seen == [1]


def _sidecar(folder, name, **meta):
    (folder / name).write_text(json.dumps(dict(meta, state=meta.get("state", "done"))))


def test_ids_of_any_width_keep_take_order_and_are_found_again(tmp_path):
    """Past 9999 the names grow a digit: the scan and the listing still see them, in take order."""
    from segue.daemon.takes import list_takes, next_take_id, sidecars

    for tid in (9998, 9999, 10000, 10001):
        _sidecar(tmp_path, f"{tid:04d}-generate.json", id=tid)
    assert [t for t, _ in sidecars(tmp_path)] == [9998, 9999, 10000, 10001]
    assert [m["id"] for m in list_takes(tmp_path, 3)] == [10001, 10000, 9999]
    assert next_take_id(tmp_path) == 10002


def test_a_file_without_its_sidecar_still_uses_up_its_number(tmp_path):
    """A crash between a WAV's creation and its sidecar's (before the sidecar came first) left a WAV that the next
    session wrote over: every numbered file counts."""
    from segue.daemon.takes import next_take_id

    _sidecar(tmp_path, "0003-generate.json", id=3)
    (tmp_path / "0007-generate.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert next_take_id(tmp_path) == 8


def test_a_take_is_found_by_its_exact_name_never_a_prompt_or_a_link_out(tmp_path):
    from segue.daemon.takes import take_wav

    for name in ("0003-continue.wav", "0003-continue.prompt.wav", "0003-continue.melody.wav"):
        sf.write(str(tmp_path / name), np.zeros(10, np.float32), 48000)
    _sidecar(tmp_path, "0003-continue.json", id=3)
    for _ in range(8):  # the glob used to pick the prompt in 6 of 8 tries
        assert take_wav(tmp_path, 3) == tmp_path / "0003-continue.wav"
    outside = tmp_path.parent / "secret.wav"
    sf.write(str(outside), np.zeros(10, np.float32), 48000)
    (tmp_path / "0004-generate.wav").symlink_to(outside)  # named like a take, pointing out of the folder
    _sidecar(tmp_path, "0004-generate.json", id=4)
    assert take_wav(tmp_path, 4) is None
    assert take_wav(tmp_path, 5) is None  # no such take
    (tmp_path / "0006-generate.wav").mkdir()
    _sidecar(tmp_path, "0006-generate.json", id=6)
    assert take_wav(tmp_path, 6) is None  # not a regular file


def test_the_sidecar_follows_a_playing_take_and_a_crash_leftover_says_it_is_partial(tmp_path, writer):
    """Once a second of audio the sidecar says how far the take got; a sidecar left saying `playing` (the
    process was killed) is marked `interrupted` with the length its WAV holds."""
    from segue.daemon.takes import recover

    files = TakeFiles(tmp_path, 1, "generate", 48000, 1, 4, dict(), writer=writer)
    for c in _chunks(25, 4800, 1):  # 2.5 s
        files.write(c, None)
    assert writer.sync()
    meta = json.loads((tmp_path / "0001-generate.json").read_text())
    assert meta["state"] == "playing" and meta["samples"] >= 2 * 48000
    files._wav.flush()  # what a kill leaves: the last flush's header (each chunk is flushed)
    assert recover(tmp_path) == [1]
    meta = json.loads((tmp_path / "0001-generate.json").read_text())
    assert meta["state"] == "interrupted" and meta["samples"] == 25 * 4800 == sf.info(
        str(tmp_path / "0001-generate.wav")).frames
    assert recover(tmp_path) == []  # once
