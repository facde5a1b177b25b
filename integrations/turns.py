"""When the caller spoke, in a Pipecat call: the user turns (UserStartedSpeakingFrame to UserStoppedSpeakingFrame)
and the speech the VAD frames report, in seconds from the call's start, and the stretch of the call each turn's
text took (pipecat.py's `ChatdockMemoryService` stores it as the part's `start_timestamp` / `end_timestamp`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Span", "Turn", "TurnClock"]


@dataclass
class Span:
    """A stretch of the call, in seconds from its start; `end` is None while it lasts."""

    start: float
    end: float | None = None


@dataclass
class Turn:
    """A user turn, from UserStartedSpeakingFrame to UserStoppedSpeakingFrame, and the speech heard in it."""

    start: float
    end: float | None = None
    speech: list[Span] = field(default_factory=list)


class TurnClock:
    """The turns and the speech of one call, which started now (`started_wall`, `time.time()`, is that moment).

    A turn's stretch is that of the speech the VAD frames report during it when the pipeline has them (a VAD frame
    comes `start_secs` after the speech started and `stop_secs` after it stopped, and carries the time it was
    made), that of the turn frames otherwise (UserStartedSpeakingFrame: the turn opened; UserStoppedSpeakingFrame:
    the turn strategies agreed it was over, later than the speech's end), and the moment its text came with
    neither (text typed into the pipeline).

    The turn and VAD frames are system frames and pass ahead of the frame queue, so the next turn may be open
    already when this one's text comes: a turn's text takes the closed turns at the front."""

    def __init__(self) -> None:
        self._started_monotonic = time.monotonic()
        self.started_wall = time.time()
        self._turns: list[Turn] = []
        self._speech: list[Span] = []  # heard while no turn was open: the next turn takes it
        self._speaking: Span | None = None

    def now(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self._started_monotonic

    def since_start(self, wall: float) -> float:
        """A wall-clock time (`time.time()`) as seconds from the call's start."""
        return wall - self.started_wall

    def turn_started(self) -> None:
        self._turns.append(Turn(self.now(), speech=self._speech))
        self._speech = []

    def turn_stopped(self) -> None:
        if self._turns and self._turns[-1].end is None:
            self._turns[-1].end = self.now()

    def speech_started(self, timestamp: float, start_secs: float) -> None:
        self._speaking = Span(max(0.0, self.since_start(timestamp) - start_secs))
        if self._turns and self._turns[-1].end is None:
            self._turns[-1].speech.append(self._speaking)
        else:  # VAD usually opens the turn: the speech waits for the turn it belongs to
            self._speech.append(self._speaking)

    def speech_stopped(self, timestamp: float, stop_secs: float) -> None:
        if self._speaking is not None:
            self._speaking.end = max(self._speaking.start, self.since_start(timestamp) - stop_secs)
            self._speaking = None

    def bot_began(self, wall: float) -> None:
        """The bot began a turn at `wall`: speech that ended before it, in no turn with words (a cough, a
        backchannel the turn strategies let pass), is not the start of the caller's next turn."""
        began = self.since_start(wall)
        self._turns = [turn for turn in self._turns if turn.end is None or turn.end >= began]
        self._speech = [span for span in self._speech if span.end is None or span.end >= began]

    def take(self) -> tuple[float, float]:
        """The stretch of the call (start, end) of the turn whose text just came, in seconds from its start."""
        now = self.now()
        closed: list[Turn] = []
        while self._turns and self._turns[0].end is not None:
            closed.append(self._turns.pop(0))
        if closed:
            last_end = closed[-1].end
            start, end = closed[0].start, now if last_end is None else last_end
            speech = [span for turn in closed for span in turn.speech]
        elif self._turns:  # the aggregator wrote part of a turn still open (an early inference): up to now
            turn = self._turns[0]
            start, end, speech = turn.start, now, turn.speech
            turn.start, turn.speech = now, [span for span in turn.speech if span.end is None]
        else:  # no turn frames in this pipeline: the moment the text came
            start, end, speech = now, now, self._speech
            self._speech = []
        if speech:
            start = speech[0].start
            ends = [span.end for span in speech if span.end is not None]
            if ends:
                end = max(ends)
        return round(max(start, 0.0), 3), round(max(end, start), 3)
