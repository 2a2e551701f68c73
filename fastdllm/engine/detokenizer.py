"""Incremental detokenization and stop-string detection.

Only the last few tokens are decoded at each step (the offsets trick used by serving
engines), so the per-step cost does not grow with the length of the output.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0
        self.stop = [s for s in (stop or []) if s]
        self.stopped_at: int | None = None  # number of ids kept when a stop string matched

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, new_ids: list[int]) -> bool:
        """Append ids (text is held back while a UTF-8 character is incomplete). True on a stop string."""
        for tok in new_ids:
            self.ids.append(tok)
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
                if self._append(full[len(prefix):]):
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
        if self.stopped_at is not None:
            return
        rest = self._decode(self.ids[self.prefix_offset:])
        piece = rest[len(self._decode(self.ids[self.prefix_offset:self.read_offset])):]
        if piece:
            self._append(piece)
