"""The garbage collector, tuned for a server once it has started.

CPython collects its youngest generation every 700 container allocations. A proxied
request allocates hundreds (headers, parsed JSON, futures, the record), so the collector ran
every few requests and, in its older generations, walked every object start-up left behind
(modules, settings, the limits, prometheus-client's registry), none of which ever becomes
garbage. Stubbing the collector out saved 44k of ~1,100k instructions a request (4%,
`python -m bench.instructions`, #18).

`tune_collector()` runs once the app has started: it freezes what start-up allocated
(`gc.freeze()`: moved to a permanent generation no collection walks) and raises the youngest
generation's threshold to `YOUNG_THRESHOLD`. Reference counting still frees almost
everything at once; only garbage in reference cycles waits for a collection, and a young
collection now comes every 10,000 allocations, a few requests' worth.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Container allocations (less deallocations) between collections of the youngest
generation; CPython's default is 700."""


def tune_collector() -> None:
    """Collect start-up's garbage, freeze what is left, and collect less often from now on;
    the older generations keep CPython's ratios."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
