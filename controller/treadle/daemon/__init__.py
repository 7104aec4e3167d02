"""The controller daemon: its pipeline's steps, one module each, and the process around them.

A commit travels, in order::

    fetch ─► gate ─► render ─► plan ─► sign ─► publish ─► confirm ─► advance

- :mod:`.fetch` mirrors the upstream repository and watches its ref;
- :mod:`.gate` decides whether a new head may deploy (fast-forward, signed commits);
- :mod:`.render` loads, renders and checks it (the rendering itself is :mod:`treadle.fabric`'s);
- :mod:`.pipeline` runs the cycle, one call per step: it plans what changed and records the outcome;
- :mod:`.release` is the one sign → publish → confirm path, over :mod:`.sign` (DSSE envelopes),
  :mod:`.publish` (static files, written atomically) and :mod:`.state` (SQLite: what was
  published, so a restart confirms instead of redoing);
- :mod:`.rollouts` advances staged rollouts: it carries out what :mod:`treadle.rollout`'s
  pure state machine decides.

The process around them: :mod:`.process` (threads, signals, the watch loop),
:mod:`.api` (HTTP), :mod:`.config`, :mod:`.metrics`, :mod:`.nodeview`
(a node's page for the API and the console) and :mod:`.generation`
(the generation counter's rules); :mod:`.client` is the commands' client of the API.
"""
