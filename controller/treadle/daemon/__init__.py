"""The controller daemon: its pipeline's steps, one module each, and the process around them.

A commit travels, in order::

    fetch ─► gate ─► render ─► plan ─► sign ─► publish ─► confirm ─► advance

- :mod:`.fetch` mirrors the upstream repository and watches its ref;
- :mod:`.gate` decides whether a new head may deploy (fast-forward, signed commits);
- rendering is :mod:`treadle.fabric`'s (the renderer the pipeline calls is in :mod:`.pipeline`);
- :mod:`.pipeline` plans what changed, runs one cycle and records its outcome;
- :mod:`.sign` stamps and signs manifests in DSSE envelopes;
- :mod:`.publish` writes them as static files, atomically;
- :mod:`.state` (SQLite) records what was published, so a restart confirms instead of redoing;
- :mod:`.rollouts` advances staged rollouts (:mod:`treadle.rollout` holds their pure state machine).

The process around them: :mod:`.process` (threads, signals, the watch loop),
:mod:`.api` (HTTP), :mod:`.config`, :mod:`.metrics`, :mod:`.nodeview`
(a node's page for the API and the console) and :mod:`.generation`
(the generation counter's rules).
"""
