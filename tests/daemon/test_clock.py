from segue.daemon.clock import Grid
from segue.daemon.vocabulary import Start


def test_grid_lines_at_120_bpm():
    g = Grid(48000, 120.0, 4, anchor=1000.0)
    assert g.samples_per_beat == 24000 and g.samples_per_bar == 96000
    assert g.next_beat(1000) == 1000 and g.next_beat(1001) == 25000
    assert g.next_bar(1001) == 97000 and g.last_bar(96999) == 1000 and g.last_bar(97000) == 97000
    assert g.bars(2) == 192000


def test_retempo_keeps_the_beat_position_or_reanchors():
    g = Grid(48000, 120.0, 4)
    now = 60000.0  # beat 2.5
    faster = g.retempo(now, 240.0)
    assert abs(faster.beat_at(now) - 2.5) < 1e-9 and faster.samples_per_beat == 12000
    anchored = g.retempo(now, 120.0, 3, beat=0.0)  # "now is a bar line"
    assert anchored.next_bar(now) == round(now) and anchored.beats_per_bar == 3


def test_resolve_start():
    g = Grid(48000, 120.0, 4)
    assert g.resolve(Start("now"), 5000) == (5000, False)
    assert g.resolve(Start("next_beat"), 5000) == (24000, False)
    assert g.resolve(Start("next_bar"), 5000) == (96000, False)
    assert g.resolve(Start(None, 200000), 5000) == (200000, False)
    assert g.resolve(Start(None, 100), 5000) == (5000, True)  # too late: as soon as possible, and said so
