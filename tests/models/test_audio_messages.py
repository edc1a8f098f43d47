"""What `read_audio` says about a file it cannot read: what is really wrong, with the formats this soundfile build
reads, and none of the C decoders' own output (libsndfile, mpg123) on the terminal."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from segue.models.audio import read_audio, readable_formats
from segue.models.errors import AudioInputError

MP3 = "MP3" in sf.available_formats()


@pytest.fixture
def real_mp3(tmp_path):
    if not MP3:
        pytest.skip("this soundfile build has no MP3")
    x = (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
    path = tmp_path / "real.mp3"
    sf.write(str(path), x, 32000, format="MP3")
    return path


def _refused(path, capfd) -> str:
    with pytest.raises(AudioInputError) as exc:
        read_audio(path)
    c_stderr = capfd.readouterr().err
    assert c_stderr == "", c_stderr  # the decoders' chatter stays off the terminal
    return str(exc.value)


def test_garbage_named_mp3(tmp_path, capfd):
    path = tmp_path / "song.mp3"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes())
    msg = _refused(path, capfd)
    assert "does not exist" not in msg and "WAV, FLAC or OGG" not in msg
    if MP3:
        assert "cannot be read as MP3: it looks corrupt or truncated" in msg and ", MP3," in msg
    assert all(f in msg for f in ("WAV", "FLAC", "OGG"))


def test_an_mp3_cut_inside_its_first_frame(real_mp3, tmp_path, capfd):
    path = tmp_path / "head.mp3"
    path.write_bytes(real_mp3.read_bytes()[:200])
    msg = _refused(path, capfd)
    assert "cannot be read as MP3" in msg and "does not exist" not in msg


def test_a_truncated_mp3_reads_what_is_there_quietly(real_mp3, tmp_path, capfd):
    path = tmp_path / "cut.mp3"
    data = real_mp3.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    audio, sr = read_audio(path)
    assert sr == 32000 and 0 < audio.shape[1] < 32000
    assert capfd.readouterr().err == ""


def test_text_named_wav_and_an_unknown_extension(tmp_path, capfd):
    wav = tmp_path / "notes.wav"
    wav.write_text("not audio")
    msg = _refused(wav, capfd)
    assert "is not an audio file this soundfile build can read: its contents are not WAV" in msg
    m4a = tmp_path / "song.m4a"
    m4a.write_bytes(b"\0" * 300)
    msg = _refused(m4a, capfd)
    assert ".m4a is not among its formats" in msg and ", ".join(readable_formats()) in msg


def test_the_command_line_prints_one_line_for_a_corrupt_mp3(tmp_path):
    path = tmp_path / "song.mp3"
    path.write_bytes(os.urandom(300) if not MP3 else b"\xff\xfb\x90\x00" + bytes(400))
    r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "generate", "--model", "demo", "--continue",
                        str(path), "--out", str(tmp_path / "o.wav")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segue: error: {path}"), r.stderr
