"""Staged, health-gated rollouts: the plan, observe and advance steps of the pipeline.

Rules of this layer:

- ``policy`` turns rollout.yaml into typed values and answers "may a wave
  start now?" (change windows, freezes). Pure.
- ``waves`` assigns the changed nodes of a commit to waves. Pure and
  deterministic: the same commit and fabric give the same waves.
- ``machine`` is the rollout state machine. Pure: ``step()`` takes the
  rollout, the time and what the agents report, and returns the next rollout
  and the actions the pipeline must carry out (publish a wave, roll back).
  It never does I/O, so every transition is testable with a fake clock.
- ``observe`` reads agent health (their /metrics, or a Prometheus server);
  missing, stale or unreadable data is reported as missing, never as healthy.
- ``store`` persists every rollout after every transition (SQLite), so a
  restarted controller continues at the same step.
"""
