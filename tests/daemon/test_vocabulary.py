import numpy as np
import pytest

from segue.daemon import vocabulary as v


def test_continue_live_bars_parses_to_typed_command():
    cmd = v.parse({"cmd": "continue", "source": "live", "last_bars": 2, "start": "next_bar", "bars": 2})
    assert cmd == v.Continue(v.LiveSource(bars=2.0), start=v.Start("next_bar"), length=v.Length(bars=2.0))


def test_every_command_parses():
    assert isinstance(v.parse({"cmd": "generate", "prompt": "dub", "seconds": 4, "start": 96000}), v.Generate)
    assert v.parse({"cmd": "generate", "endless": True}).length.endless
    assert v.parse({"cmd": "stop", "take": 3, "fade": 0.2}) == v.Stop(3, 0.2)
    assert v.parse({"cmd": "retry"}) == v.Retry()
    assert v.parse({"cmd": "set", "temperature": 0.7, "top_k": 50.0}).values == {"temperature": 0.7, "top_k": 50}
    assert v.parse({"cmd": "tempo", "bpm": 128, "beats_per_bar": 3, "beat": 0}) == v.Tempo(128.0, 3, 0.0)
    assert v.parse({"cmd": "status"}) == v.Status() and v.parse({"cmd": "takes"}) == v.Takes()
    assert v.parse({"cmd": "continue", "source": "take", "take": 4}).source == v.TakeSource(4)
    assert v.parse({"cmd": "continue", "source": "file", "path": "a.wav"}).source == v.FileSource("a.wav")
    assert v.parse({"cmd": "continue", "source": "file", "path": "a.wav", "last_bars": 2}).source == v.FileSource(
        "a.wav", None, 2.0)


def test_a_melody_comes_from_any_source():
    assert v.parse({"cmd": "generate", "melody": "live", "melody_last_bars": 2}).melody == v.LiveSource(bars=2.0)
    assert v.parse({"cmd": "generate", "melody": "take", "melody_take": 3}).melody == v.TakeSource(3)
    cmd = v.parse({"cmd": "continue", "source": "live", "melody": "file", "melody_path": "tune.wav",
                   "melody_last_seconds": 8})
    assert cmd.source == v.LiveSource() and cmd.melody == v.FileSource("tune.wav", 8.0)
    pcm = np.arange(6, dtype=np.float32)
    gen = v.parse({"cmd": "generate", "melody": "pcm", "sample_rate": 32000}, pcm.tobytes())
    np.testing.assert_array_equal(gen.melody.audio, pcm[None])
    assert gen.melody.sample_rate == 32000
    # continue source=pcm melody=pcm: one PCM part, both the prompt and the melody
    both = v.parse({"cmd": "continue", "source": "pcm", "sample_rate": 44100, "melody": "pcm",
                    "melody_last_seconds": 1}, pcm.tobytes())
    assert both.melody.audio is both.source.audio and both.melody.seconds == 1.0 and both.source.seconds is None
    assert v.parse({"cmd": "generate", "melody": None}).melody is None
    assert v.parse({"cmd": "generate"}).melody is None


def test_pcm_source_is_deinterleaved():
    pcm = np.arange(8, dtype=np.float32).reshape(4, 2)  # [n, C] interleaved on the wire
    cmd = v.parse({"cmd": "continue", "source": "pcm", "sample_rate": 44100, "channels": 2}, pcm.tobytes())
    np.testing.assert_array_equal(cmd.source.audio, pcm.T)
    assert cmd.source.sample_rate == 44100


@pytest.mark.parametrize("request_, code", [
    ([1, 2], v.BAD_REQUEST),
    ({}, v.MISSING),
    ({"cmd": "dance"}, v.UNKNOWN_COMMAND),
    ({"cmd": "status", "loud": 1}, v.UNKNOWN_FIELD),
    ({"cmd": "generate", "seconds": "ten"}, v.BAD_TYPE),
    ({"cmd": "generate", "seconds": True}, v.BAD_TYPE),
    ({"cmd": "generate", "seconds": -1}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "seconds": 0}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "seconds": 1e9}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "seconds": 2, "bars": 2}, v.BAD_REQUEST),
    ({"cmd": "generate", "start": "soon"}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "temperature": float("nan")}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "top_k": 2.5}, v.BAD_TYPE),
    ({"cmd": "generate", "prompt": "x" * 5000}, v.TOO_LARGE),
    ({"cmd": "continue"}, v.MISSING),
    ({"cmd": "continue", "source": "radio"}, v.OUT_OF_RANGE),
    ({"cmd": "continue", "source": "live", "last_bars": 2, "last_seconds": 3}, v.BAD_REQUEST),
    ({"cmd": "continue", "source": "pcm", "sample_rate": 48000}, v.MISSING),
    ({"cmd": "generate", "melody": "radio"}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "melody": 3}, v.BAD_TYPE),
    ({"cmd": "generate", "melody": "take"}, v.MISSING),
    ({"cmd": "generate", "melody": "take", "melody_take": 0}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "melody": "file"}, v.MISSING),
    ({"cmd": "generate", "melody": "pcm", "sample_rate": 48000}, v.MISSING),
    ({"cmd": "generate", "melody": "live", "melody_last_bars": 1, "melody_last_seconds": 2}, v.BAD_REQUEST),
    ({"cmd": "generate", "melody_take": 2}, v.UNKNOWN_FIELD),
    ({"cmd": "set", "model": ""}, v.BAD_TYPE),
    ({"cmd": "set", "model": 7}, v.BAD_TYPE),
    ({"cmd": "set"}, v.MISSING),
    ({"cmd": "set", "volume": 3}, v.UNKNOWN_FIELD),
    ({"cmd": "tempo"}, v.MISSING),
    ({"cmd": "tempo", "bpm": 5000}, v.OUT_OF_RANGE),
    ({"cmd": "stop", "fade": 60}, v.OUT_OF_RANGE),
    ({"cmd": "tempo", "bpm": 10**400}, v.OUT_OF_RANGE),  # no float holds it: out of range, not `internal`
    ({"cmd": "generate", "prompt": "\ud800"}, v.BAD_TYPE),  # a lone surrogate: was ok, then `internal`
    ({"cmd": "set", "prompt": "bad \udcff"}, v.BAD_TYPE),
    ({"cmd": "generate", "seconds": -(10**310)}, v.OUT_OF_RANGE),
    ({"cmd": "generate", "seed": 10**400}, v.OUT_OF_RANGE),
])
def test_bad_requests_get_a_code_and_a_sentence(request_, code):
    with pytest.raises(v.CommandError) as err:
        v.parse(request_)
    assert err.value.code == code and len(err.value.message) > 10


@pytest.mark.parametrize("payload, code", [
    (b"\x00\x00\x80", v.BAD_AUDIO),  # not whole float32 frames
    (b"", v.BAD_AUDIO),
    (np.array([0.1, np.nan], np.float32).tobytes(), v.BAD_AUDIO),
    (np.array([0.1, np.inf], np.float32).tobytes(), v.BAD_AUDIO),
])
def test_bad_pcm_is_refused(payload, code):
    with pytest.raises(v.CommandError) as err:
        v.parse({"cmd": "continue", "source": "pcm", "sample_rate": 48000}, payload)
    assert err.value.code == code


@pytest.mark.parametrize("request_, key", [
    ({"cmd": "tempo", "bpm": None}, "bpm"),
    ({"cmd": "continue", "source": None}, "source"),
    ({"cmd": "continue", "source": "take", "take": None}, "take"),
    ({"cmd": "continue", "source": "file", "path": None}, "path"),
    ({"cmd": "continue", "source": "pcm", "sample_rate": None}, "sample_rate"),
    ({"cmd": "generate", "melody": "take", "melody_take": None}, "melody_take"),
    ({"cmd": "generate", "melody": "file", "melody_path": None}, "melody_path"),
])
def test_a_null_in_a_required_field_is_refused_before_ok(request_, key):
    """A null is no value: the parser refuses it (`missing`, naming the field), so the request is never accepted
    and then failed in the engine with no id to match it to."""
    with pytest.raises(v.CommandError) as err:
        v.parse(request_, np.zeros(4, np.float32).tobytes())
    assert err.value.code == v.MISSING and f"'{key}' (null given)" in err.value.message


def test_a_cmd_that_is_no_string_is_bad_type_and_a_missing_one_missing():
    for req in ({"cmd": 5}, {"cmd": ["status"]}, {"cmd": {"x": 1}}):
        with pytest.raises(v.CommandError) as e:
            v.parse(req)
        assert e.value.code == "bad_type" and "'cmd'" in e.value.message
    for req in ({}, {"cmd": None}):
        with pytest.raises(v.CommandError) as e:
            v.parse(req)
        assert e.value.code == "missing"


def test_a_path_with_a_control_character_is_bad_type_before_ok():
    """A NUL in a path reached `Path.resolve()` on the engine's side and came back as `internal`."""
    for req, field in (({"cmd": "continue", "source": "file", "path": "a\x00b.wav"}, "'path'"),
                       ({"cmd": "continue", "source": "file", "path": ""}, "'path'"),
                       ({"cmd": "generate", "melody": "file", "melody_path": "tune\n.wav"}, "'melody_path'")):
        with pytest.raises(v.CommandError) as e:
            v.parse(req)
        assert e.value.code == "bad_type" and field in e.value.message
    assert v.parse({"cmd": "continue", "source": "file", "path": "loops/é b.wav"}).source.path == "loops/é b.wav"
