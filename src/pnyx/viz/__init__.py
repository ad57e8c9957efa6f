"""pnyx.viz: pictures of pnyx runs, as self-contained HTML files.

This package owns turning what pnyx records into something a person can watch:

- `pnyx.viz.replay`: the replay of a simulated run (`pnyx sim --html`,
  `pnyx sim-kv --html`, `pnyx replay TRACE --html`) from its JSON-lines trace;
- `pnyx.viz.narrate`: the same run told in words on the terminal (`pnyx sim --narrate`);
- `pnyx.viz.live`: the live view of a running cluster (`/ui` and its event stream
  `/ui/events` on every member's HTTP port; the page is `live.html`);
- `replay.html`, `replay.js`, `replay.css`: the page itself, plain HTML, CSS and
  JavaScript with SVG, inlined into the file written (no network, no build step).

The picture of a client history lives with the checker: `pnyx.check.html`.
"""

from pnyx.viz.replay import MAX_EVENTS, TraceError, load_trace, replay_html, write_replay

__all__ = ["MAX_EVENTS", "TraceError", "load_trace", "replay_html", "write_replay"]
