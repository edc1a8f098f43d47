"""The OSC address table: messages to vocabulary requests, number coercion, bad arity; the README's OSC section
is the table."""

from pathlib import Path

import pytest

from segue.daemon.vocabulary import Continue, Generate, Set, Tempo, parse
from segue.osc_bridge.addresses import ADDRESSES, OscError, table_markdown, to_request


def test_every_vocabulary_command_has_an_address():
    assert {a.cmd for a in ADDRESSES if a.cmd} == {"generate", "continue", "stop", "retry", "set", "tempo", "status",
                                                   "takes"}


def test_positional_then_pairs_become_the_command():
    _, req = to_request("/segue/continue", ["live", "last_bars", 2, "bars", 2, "start", "next_bar"])
    cmd = parse(req)
    assert isinstance(cmd, Continue) and cmd.source.bars == 2 and cmd.length.bars == 2 and cmd.start.at == "next_bar"
    cmd = parse(to_request("/segue/generate", ["dub techno", "seconds", 8, "seed", 3])[1])
    assert isinstance(cmd, Generate) and cmd.prompt == "dub techno" and cmd.seed == 3
    cmd = parse(to_request("/segue/tempo", [120, 4, 0])[1])
    assert isinstance(cmd, Tempo) and (cmd.bpm, cmd.beats_per_bar, cmd.beat) == (120, 4, 0)
    assert isinstance(parse(to_request("/segue/set", ["temperature", 0.8, "cfg", 4])[1]), Set)


def test_leading_arguments_can_be_left_out():
    assert parse(to_request("/segue/stop", ["fade", 0.2])[1]).take is None
    cmd = parse(to_request("/segue/generate", ["bars", 4.0, "start", "next_bar"])[1])
    assert cmd.prompt is None and cmd.length.bars == 4
    assert parse(to_request("/segue/stop", [3, "fade", 0.2])[1]).take == 3
    assert parse(to_request("/segue/continue", ["source", "live", "last_bars", 1])[1]).source.bars == 1


def test_float_only_senders_work():
    """Pd sends every number as a float: whole floats become ints where the vocabulary wants one, 0/1 booleans."""
    cmd = parse(to_request("/segue/generate", ["pad", "seed", 7.0, "endless", 1.0, "lane", 2.0, "top_k", 50.0])[1])
    assert cmd.seed == 7 and cmd.length.endless and cmd.lane == 2 and cmd.sampling.top_k == 50
    assert parse(to_request("/segue/tempo", [96.0, 3.0])[1]).beats_per_bar == 3


@pytest.mark.parametrize("path, args, code", [
    ("/segue/dance", [], "unknown_command"),
    ("/segue/continue", [], "missing"),
    ("/segue/tempo", [120, 4, 0, 9], "bad_request"),
    ("/segue/generate", ["pad", "seed"], "bad_request"),
    ("/segue/generate", ["pad", 3, 4], "bad_type"),
    ("/segue/generate", ["pad", "prompt", "x"], "bad_request"),
])
def test_messages_that_do_not_fit_are_refused_with_a_code(path, args, code):
    with pytest.raises(OscError) as e:
        to_request(path, args)
    assert e.value.code == code and e.value.message


def test_the_readme_osc_section_is_the_table():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert table_markdown() in readme, "regenerate the README's OSC table from osc_bridge.addresses.table_markdown()"
