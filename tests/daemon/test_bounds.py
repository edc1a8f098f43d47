"""One set of bounds for every number segue takes (`vocabulary.BOUNDS`): `segue generate`'s flags, `segue serve`'s
flags and config file, and the wire (ZeroMQ here; OSC and the MIDI map go through the same `parse`). Out of range
or not finite is one line naming the flag and exit 2 on the command line, `out_of_range` / `bad_type` on the wire."""

import math

import numpy as np
import pytest

import support
from segue.daemon.cli import main
from segue.daemon.client import Client, DaemonError
from segue.daemon.serve import SettingsError, load_settings
from segue.daemon.vocabulary import BOUNDS, MAX_SEED

NOT_CACHED = ["generate", "--model", "acme/not-cached"]  # fails at the model, after every flag was checked


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segue: error:"), err
    return err[0]


# -- segue generate ----------------------------------------------------------------------------------------------------
REFUSED = [  # (flag, value as typed, vocabulary key, wire value)
    ("--seed", "18446744073709551616", "seed", 2**64),
    ("--seed", str(2**63), "seed", 2**63),
    ("--seed", "-1", "seed", -1),
    ("--cfg", "1e39", "cfg", 1e39),
    ("--cfg", "inf", "cfg", math.inf),
    ("--cfg", "nan", "cfg", math.nan),
    ("--cfg", "101", "cfg", 101.0),
    ("--cfg", "-2", "cfg", -2.0),
    ("--temperature", "1e300", "temperature", 1e300),
    ("--temperature", "-inf", "temperature", -math.inf),
    ("--temperature", "-0.5", "temperature", -0.5),
    ("--top-k", "-1", "top_k", -1),
    ("--top-k", "2049", "top_k", 2049),  # beyond a codebook's 2048 entries
    ("--top-k", "1000001", "top_k", 1_000_001),
    ("--top-p", "1.5", "top_p", 1.5),
    ("--top-p", "nan", "top_p", math.nan),
    ("--duration", "0", "seconds", 0.0),
    ("--duration", "-3", "seconds", -3.0),
    ("--duration", "1e7", "seconds", 1e7),
    ("--duration", "inf", "seconds", math.inf),
    ("--prompt-seconds", "0", "prompt_seconds", 0.0),
    ("--prompt-seconds", "1e9", "prompt_seconds", 1e9),
]
ACCEPTED = [
    ("--seed", str(MAX_SEED), "seed", MAX_SEED),
    ("--seed", "0", "seed", 0),
    ("--cfg", "100", "cfg", 100.0),
    ("--cfg", "0", "cfg", 0.0),
    ("--temperature", "0", "temperature", 0.0),
    ("--temperature", "100", "temperature", 100.0),
    ("--top-k", "2048", "top_k", 2048),
    ("--top-p", "1", "top_p", 1.0),
    ("--duration", "3600", "seconds", 3600.0),
    ("--prompt-seconds", "3600", "prompt_seconds", 3600.0),
]


@pytest.mark.parametrize("flag, value, key, wire", REFUSED, ids=[f"{f} {v}" for f, v, _, _ in REFUSED])
def test_generate_refuses_numbers_out_of_range_before_loading_a_model(flag, value, key, wire, capsys, tmp_path):
    assert main(NOT_CACHED + [f"{flag}={value}", "--out", str(tmp_path / "o.wav")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"segue: error: {flag} must be") and "Traceback" not in line, line
    assert ("finite" in line) == (not math.isfinite(float(value))), line


@pytest.mark.parametrize("args", [["--seed", "1.5"], ["--top-k", "x"], ["--threads", "two"]])
def test_argparse_type_errors_still_exit_2(args, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(NOT_CACHED + args + ["--out", str(tmp_path / "o.wav")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # one line, not the usage
    assert len(err) == 1 and err[0].startswith("segue generate: error: argument ") and "--help" in err[0], err


@pytest.mark.parametrize("value", ["0", "-1", "1025"])
def test_generate_threads_in_range(value, capsys, tmp_path):
    assert main(NOT_CACHED + [f"--threads={value}", "--out", str(tmp_path / "o.wav")]) == 2
    assert _one_line(capsys).startswith("segue: error: --threads must be at least 1 and at most 1024")


# -- segue serve: flags and config file --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ('sample_rate = "x"', "sample_rate must be a number, got str"),
    ("block_size = 1e9", "block_size must be at least 16 and at most 8192, got 1000000000"),
    ("block-size = 2.5", "block-size must be a whole number"),
    ("threads = -1", "threads must be at least 1 and at most 1024, got -1"),
    ("input_channels = 99", "input_channels must be at least 0 and at most 32, got 99"),
    ("output_channels = 0", "output_channels must be at least 1"),
    ("keep_models = true", "keep_models must be a number, got bool"),
    ("chunk_frames = nan", "chunk_frames must be finite"),
    ("sample_rate = inf", "sample_rate must be finite"),
    ("model = 3", "model must be text, got int"),
    ("pace = 3", "pace must be text"),
    ("sync = 'ableton'", "sync must be none, link or jack"),
    ("allow = [1, 2]", "allow must be a folder or a list of folders"),
    ("[serve]\nthreads = 0", "threads must be at least 1"),
])
def test_a_bad_config_value_is_one_clear_error(tmp_path, text, words):
    cfg = tmp_path / "segue.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(str(cfg), {})
    assert str(exc.value).startswith(f"{cfg}: ") and words in str(exc.value), str(exc.value)


def test_config_values_of_the_right_kind_load(tmp_path):
    cfg = tmp_path / "segue.toml"
    cfg.write_text("sample_rate = 44100\nblock_size = 512.0\naudio_device = 3\nallow = 'loops'\nthreads = 2\n")
    s = load_settings(str(cfg), {})
    assert (s.sample_rate, s.block_size, s.audio_device, s.allow, s.threads) == (44100, 512, "3", ("loops",), 2)
    assert isinstance(s.block_size, int)


@pytest.mark.parametrize("args, words", [
    (["--threads", "-1"], "--threads must be at least 1 and at most 1024, got -1"),
    (["--block-size", "10"], "--block-size must be at least 16"),
    (["--input-channels", "99"], "--input-channels must be at least 0 and at most 32"),
    (["--sample-rate", "999999"], "--sample-rate must be at least 1000 and at most 384000"),
    (["--keep-models", "17"], "--keep-models must be at least 0 and at most 16"),
])
def test_serve_flags_out_of_range_are_one_line(args, words, capsys, tmp_path):
    assert main(["serve", "--model", "demo", "--audio-device", "none", "--takes", str(tmp_path / "t"), *args]) == 2
    assert words in _one_line(capsys)


def test_serve_config_error_through_the_command_line(capsys, tmp_path):
    cfg = tmp_path / "segue.toml"
    cfg.write_text('sample_rate = "x"\n')
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "sample_rate must be a number" in _one_line(capsys)


def test_every_serve_number_has_its_bounds_in_the_vocabulary():
    from segue.daemon.serve import NUMERIC

    assert set(NUMERIC) <= set(BOUNDS)


# -- the command line and the daemon refuse the same values ------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(demo, tmp_path_factory):
    from segue.daemon.zmq_transport import ZmqServer

    def transport(engine):
        server = ZmqServer(engine, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        engine.mixer.publish = server.audio
        return server

    engine, server = support.start_engine(demo, tmp_path_factory.mktemp("bounds") / "takes", transport)
    client = Client(server.endpoint, timeout=10)
    yield client
    client.close()
    server.close()
    engine.close()


def _daemon_says(client, key, value):
    """The daemon's answer to `key=value` in a request: None if accepted, else its error code. Sampling and lengths
    go through `set` (the same check as a take's fields, without starting a take); the seed through `retry`."""
    cmd = "retry" if key == "seed" else "set"
    try:
        client.request(cmd, **{key: value})
        return None
    except DaemonError as exc:
        return exc.code


@pytest.mark.parametrize("flag, value, key, wire", REFUSED + ACCEPTED,
                         ids=[f"{f} {v}" for f, v, _, _ in REFUSED + ACCEPTED])
def test_the_command_line_and_the_daemon_refuse_the_same_values(daemon, flag, value, key, wire, capsys, tmp_path):
    wav = support.write_wav(tmp_path / "in.wav", np.zeros((1, 3200), np.float32), 32000)
    argv = NOT_CACHED + [f"{flag}={value}", "--out", str(tmp_path / "o.wav")]
    if flag == "--prompt-seconds":
        argv += ["--continue", str(wav)]
    assert main(argv) == 2
    line = _one_line(capsys)
    cli_refused = line.startswith(f"segue: error: {flag}")
    code = _daemon_says(daemon, key, wire)
    assert cli_refused == (code is not None), (line, code)
    if code is not None:
        assert code == "out_of_range"
    else:
        assert "not in the local cache" in line  # the flags passed; the model is what failed
    daemon.request("set", temperature=1.0, top_k=250, top_p=0.0, cfg=3.0, seconds=4.0, prompt_seconds=10.0)


def test_the_wire_says_bad_type_for_a_number_that_is_not_one(daemon):
    for key, value in (("cfg", "3"), ("top_k", 2.5), ("temperature", True)):
        with pytest.raises(DaemonError) as exc:
            daemon.request("set", **{key: value})
        assert exc.value.code == "bad_type"


# -- the MIDI map: the same checks when it loads -----------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ('[cc.1]\nset = "top_k"\nmin = 10\nmax = inf\ncurve = "exp"', "'min' and 'max' must be finite numbers"),
    ('[cc.1]\nset = "temperature"\nmin = nan\nmax = 1', "'min' and 'max' must be finite numbers"),
    ('[cc.1]\nset = "cfg"\nmin = 1\nmax = 1e39', "'cfg' must be at least 0 and at most 100, got 1e+39"),
    ('[notes]\n36 = { cmd = "generate", seed = 18446744073709551616 }', "'seed' must be at least 0 and at most"),
    ('[notes]\n36 = { cmd = "generate", cfg = inf }', "'cfg' must be finite"),
    ('[programs]\n0 = { temperature = 1e300 }', "'temperature' must be at least 0 and at most 100"),
])
def test_the_midi_map_refuses_the_same_values(tmp_path, text, words):
    from segue.osc_bridge.midi_map import MappingError, load_map

    path = tmp_path / "map.toml"
    path.write_text(text + "\n")
    with pytest.raises(MappingError) as exc:
        load_map(path)
    assert words in str(exc.value), str(exc.value)


# -- OSC: its messages become the same requests, refused by the same checks --------------------------------------------
@pytest.mark.parametrize("flag, value, key, wire", REFUSED, ids=[f"{f} {v}" for f, v, _, _ in REFUSED])
def test_osc_refuses_the_same_values(flag, value, key, wire):
    from segue.daemon.vocabulary import CommandError, parse
    from segue.osc_bridge.addresses import to_request

    if key == "seed":
        wire = float(wire) if abs(wire) > 2**63 else wire  # OSC carries 64-bit ints at most: a double then
    _, req = to_request("/segue/set" if key == "prompt_seconds" else "/segue/generate", [key, wire])
    with pytest.raises(CommandError) as exc:
        parse(req)
    assert exc.value.code == "out_of_range"
