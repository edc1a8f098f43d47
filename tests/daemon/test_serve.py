import subprocess
import sys

import pytest

from segue.daemon.serve import SettingsError, load_settings


def test_flags_override_the_toml_file(tmp_path):
    cfg = tmp_path / "segue.toml"
    cfg.write_text('model = "demo"\nblock-size = 512\nzmq = "tcp://127.0.0.1:6000"\nallow = ["loops"]\n')
    s = load_settings(str(cfg), {"block_size": 128, "model": None})
    assert (s.model, s.block_size, s.zmq, s.allow) == ("demo", 128, "tcp://127.0.0.1:6000", ("loops",))


@pytest.mark.parametrize("text, words", [("model = ", "not valid TOML"), ("volume = 3", "unknown setting"),
                                         ("pace = 'later'", "pace must be")])
def test_bad_config_is_one_clear_error(tmp_path, text, words):
    cfg = tmp_path / "segue.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=words):
        load_settings(str(cfg), {})


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "segue.daemon.cli", *args], capture_output=True, text=True,
                              timeout=60)

    r = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read the config file" in r.stderr
    r = run("send", "status", "--zmq", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert r.returncode == 2 and "is `segue serve` running?" in r.stderr
    r = run("serve", "--model", "demo", "--audio-device", "no-such-card", "--takes", str(tmp_path / "t"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no output device matches" in r.stderr
    r = run("send", "status", "oops")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
