from vgg_toolkit.train.schedule import PlateauSchedule


def test_three_drops_then_stop():
    s = PlateauSchedule(lr=0.01, patience=1, max_drops=3)
    assert s.update(0.5) == "improved"
    assert s.update(0.5) == "drop" and abs(s.lr - 1e-3) < 1e-12
    assert s.update(0.6) == "improved"
    assert s.update(0.59) == "drop"
    assert s.update(0.58) == "drop" and s.drops == 3 and abs(s.lr - 1e-5) < 1e-15
    assert s.update(0.58) == "stop"


def test_patience_and_state_round_trip():
    s = PlateauSchedule(lr=0.01, patience=2)
    assert [s.update(a) for a in (0.3, 0.3, 0.3)] == ["improved", "wait", "drop"]
    copy = PlateauSchedule.from_state(s.state_dict())
    assert copy == s and copy.update(0.2) == s.update(0.2)
