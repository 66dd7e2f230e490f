from glitches.scheduler.detokenizer import Detokenizer


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


def test_a_character_cut_by_the_last_token_is_dropped_not_sent_as_u_fffd():
    """max_new_tokens ends the reply after the first byte(s) of a multi-byte character."""
    text = {0: "ok ", 1: "ok \ufffd"}
    d = Detokenizer(lambda ids: text[len(ids) - 1], ())
    assert d.add(0) == "ok " and d.add(1) == ""
    assert d.finish() == "" and d.text == "ok "


def test_real_tokenizer_cut_mid_character(default_source):
    from glitches.services.generation import models

    tokenizer = models.load_tokenizer(default_source)
    ids = tokenizer("日本語", add_special_tokens=False)["input_ids"]
    text_of = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    cut = next(n for n in range(1, len(ids)) if text_of(ids[:n]).endswith("\ufffd"))
    d = Detokenizer(text_of, ())
    streamed = "".join(d.add(t) for t in ids[:cut]) + d.finish()
    assert "\ufffd" not in streamed and "\ufffd" not in d.text and "日本語".startswith(d.text)
