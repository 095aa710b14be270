"""The shipped relation check (routing/relation.py) on the study sets, router only."""

from __future__ import annotations

import sys

from routing.relation import Wording, same_question
from studies.routing_precision.analyse import Study, fmt, is_common, report

for name in sys.argv[1].split(","):
    s = Study(name)
    views: dict[int, tuple[Wording, ...]] = {}

    def rule(st: Study, q: int, c, views: dict[int, tuple[Wording, ...]] = views) -> bool:
        if c.cov < 1:
            return False
        if c.edit not in views:
            views[c.edit] = tuple(Wording.of(st.texts[k], is_common) for k in st.edits[c.edit][0])
        return same_question(st.texts[q], views[c.edit], is_common)

    print(f"{name:11s} gate+relation {fmt(report(s, 0.40, rule))}", flush=True)
