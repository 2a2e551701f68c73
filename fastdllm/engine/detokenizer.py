"""Incremental detokenization and stop-string detection.

A fast (Rust) tokenizer decodes with ``tokenizers``' own ``DecodeStream``: one call per token,
text held back while a UTF-8 character is incomplete. Any other tokenizer decodes only the last
few tokens at each step (the offsets trick used by serving engines). Either way the per-step cost
does not grow with the length of the output, and the pieces add up to the same text.

``deferred=True`` (no stop strings: nothing needs the text while decoding, as in a plain
``generate``) only collects the ids and decodes them all at once when ``text`` is read: one call
instead of one per token, the same text.
"""

from __future__ import annotations


def _stream_for(tokenizer):
    """A ``DecodeStream`` over a fast tokenizer's backend, or None (slow tokenizer, old ``tokenizers``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    return backend, DecodeStream(skip_special_tokens=True)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None, stream: bool = True, deferred: bool = False):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._text = ""
        self.prefix_offset = 0  # ids before this one are context no longer decoded
        self.read_offset = 0    # ids before this one have produced their text
        self.stop = [s for s in (stop or []) if s]
        if deferred and self.stop:
            raise ValueError("stop strings are matched while decoding: they cannot be deferred")
        self.deferred = deferred
        self.stopped_at: int | None = None  # number of ids kept when a stop string matched
        self._stream = _stream_for(tokenizer) if stream and not deferred else None

    @property
    def text(self) -> str:
        if self.deferred and self.read_offset != len(self.ids):  # decode what came since the last read
            self._text, self.read_offset = self._decode(self.ids), len(self.ids)
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self._text = value

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _piece(self, tok: int) -> str | None:
        """The text ``tok`` completes (None while a character is incomplete)."""
        if self._stream is not None:
            backend, stream = self._stream
            return stream.step(backend, tok)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        return full[len(prefix):] if len(full) > len(prefix) and not full.endswith("\ufffd") else None

    def add(self, new_ids: list[int]) -> bool:
        """Append ids (text is held back while a UTF-8 character is incomplete). True on a stop string."""
        if self.deferred:
            self.ids += new_ids
            return False
        for tok in new_ids:
            self.ids.append(tok)
            piece = self._piece(tok)
            if piece is not None:
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
                if piece and self._append(piece):
                    return True
        return False

    def stable_text(self, finished: bool) -> str:
        """Text that can be shown now: the tail that may still become a stop string is held back."""
        if finished or not self.stop:
            return self.text
        hold = max(len(s) for s in self.stop) - 1
        return self.text[:len(self.text) - hold] if hold else self.text

    def _append(self, piece: str) -> bool:
        """Add text; on a stop string, cut the text before it and record where. True if stopped."""
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        if not self.stop:
            return False
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped_at = len(self.ids)
            return True
        return False

    def flush(self) -> None:
        """Add the text of trailing ids that were held back (end of generation)."""
        if self.deferred:
            return  # ``text`` decodes them all
        if self.stopped_at is not None or self.read_offset == len(self.ids):
            return
        rest = self._decode(self.ids[self.prefix_offset:])
        piece = rest[len(self._decode(self.ids[self.prefix_offset:self.read_offset])):]
        if piece:
            self._append(piece)
