"""Text from a model (names, messages, tracebacks, printed output) made safe for a terminal.

A model is someone's code: what it prints or raises must not move the cursor,
retitle the window, rewrite what is already on screen or hide itself. HTML gets
its own escaping where pages are made.
"""

from __future__ import annotations

import re

# ANSI escape sequences (CSI ... final byte, OSC ... BEL/ST, and two-byte ESC forms), then any other
# C0/C1 control character but newline and tab
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]"
)
# C0/C1 controls (not newline, tab), and the Unicode bidirectional overrides and isolates that can make
# text read differently from what it is
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """*text* without terminal control sequences (newlines and tabs kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def rank_ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] as '0-2, 5'."""
    spans: list[list[int]] = []
    for rank in sorted(ranks):
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def ranks_on_hosts(hosts: dict[str, list[int]]) -> str:
    """{'h1': [0, 1], 'h2': [2, 3]} as 'ranks 0-1 on h1; 2-3 on h2'."""
    return "ranks " + "; ".join(f"{rank_ranges(ranks)} on {host}" for host, ranks in hosts.items())


def one_line(text: object) -> str:
    """*text* on one line, without control sequences."""
    return " ".join(plain(text).split("\n"))
