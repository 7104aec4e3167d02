"""The contract between controller and agent: every name, format and file rule both sides share.

The controller imports nothing else of ``treadle_agent`` (tests/test_packaging.py
holds it to that), and the agent's own modules import these rather than
repeating them:

    names       lifecycle states, the agent's metric names, the default metrics port,
                the simulated host's state file
    manifest    the NodeManifest: canonical JSON, digest, strict parsing, stamp, times
    envelope    the DSSE envelope: signing (controller), parsing and verifying (agent)
    trustroot   the trust-root file: written by ``treadle keys``, loaded by the agent
    files       atomic writes and the private-file check
    log         the one log format of both programs
    errors      what the above raise: the root of the agent's error tree

Nothing here imports the rest of the agent; securesystemslib is imported on
first use only.
"""
