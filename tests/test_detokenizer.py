from scheduler.detokenizer import Detokenizer


def _text_of(pieces):
    return lambda ids: "".join(pieces[i] for i in ids)


def test_text_is_released_as_tokens_arrive():
    d = Detokenizer(_text_of(["Hel", "lo", " world"]), ())
    assert [d.add(0), d.add(1), d.add(2), d.finish()] == ["Hel", "lo", " world", ""]


def test_possible_stop_prefix_is_held_back_and_stop_is_never_sent():
    d = Detokenizer(_text_of(["a", "\n", "\n", "b"]), ("\n\n",))
    out = [d.add(0), d.add(1), d.add(2)]
    assert out == ["a", "", ""]
    assert d.finish() == "" and d.text == "a"


def test_held_back_prefix_is_released_when_it_turns_out_not_to_stop():
    d = Detokenizer(_text_of(["a", "\n", "b"]), ("\n\n",))
    assert [d.add(0), d.add(1), d.add(2)] == ["a", "", "\nb"]


def test_incomplete_utf8_waits_for_the_rest():
    d = Detokenizer(_text_of(["x\ufffd", "é"]), ())
    text = {0: "x\ufffd", 1: "xé"}
    d = Detokenizer(lambda ids: text[len(ids) - 1], ())
    assert d.add(0) == "" and d.add(1) == "xé"
