"""Incremental detokenization with stop strings.

Text is released only when it is final: not ending in an incomplete UTF-8
character (the tokenizer's U+FFFD), and not a possible beginning of a stop
string. When a stop string appears, the text before it is final and the rest
is never sent. When the tokens end inside a multi-byte character (max_new_tokens
cut it), the incomplete character is dropped: the final text never ends in the
U+FFFD that stands for its bytes. With min_tokens, a stop string counts only once
that many tokens exist (the same rule as the decode loop's, glitches/services/generation/decoding.py).

Cost per token, beyond decoding the tokens: the stop search looks only at text not yet
released plus the longest stop's length (an occurrence cannot lie inside released text: its
beginning would have been held back), and the hold-back tries only the positions in the last
len(stop) - 1 characters where the stop's first character occurs. Stop strings are bounded
by the scheduler (MAX_STOP_CHARS in glitches/scheduler/orchestrator.py).
"""

from __future__ import annotations

from collections.abc import Callable

from glitches.services.generation.decoding import find_stop, stop_search_start


class Detokenizer:
    def __init__(self, text_of: Callable[[list[int]], str], stop: tuple[str, ...], min_tokens: int = 0):
        self._text_of = text_of
        self._min_tokens = min_tokens
        self._stop = tuple(s for s in stop if s)
        self._tokens: list[int] = []
        self._sent = 0  # characters already released
        self.text = ""  # text released so far

    def add(self, token_id: int) -> str:
        """Add a token; return the newly final text (possibly empty)."""
        self._tokens.append(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: release whatever is left (up to a stop string), less an incomplete last character."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        full = self._text_of(self._tokens)
        # a stop must end after the released text (it cannot begin inside it) and, with min_tokens, after
        # the text of the first min_tokens - 1 tokens; find_stop searches from len(stop) - 1 before that
        cut = find_stop(full, self._stop,
                        max(self._sent, stop_search_start(self._text_of, self._tokens, self._min_tokens)))
        if cut >= 0:
            ready = full[:cut]
        elif final:
            ready = full.rstrip("\ufffd")  # the bytes of a character the last token left incomplete
        else:
            if full.endswith("\ufffd"):
                return ""
            ready = full[: len(full) - self._held_back(full)]
        if len(ready) <= self._sent:
            return ""
        delta = ready[self._sent:]
        self._sent = len(ready)
        self.text = ready
        return delta

    def _held_back(self, full: str) -> int:
        """Length of the longest suffix of `full` that begins some stop string."""
        longest = 0
        for stop in self._stop:
            span = min(len(stop) - 1, len(full))
            tail = full[len(full) - span:] if span else ""
            i = tail.find(stop[0]) if tail else -1
            while i != -1 and span - i > longest:  # the suffix tail[i:] is longer than the best so far
                if stop.startswith(tail[i:]):
                    longest = span - i
                    break
                i = tail.find(stop[0], i + 1)
        return longest
