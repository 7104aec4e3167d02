"""Resource providers, one module per concern; the Applier (``treadle_agent.apply``) drives them.

    base.py       the Provider interface (want, inspect, repair, remove) and the per-run Context
    paths.py      safe paths below the managed root, atomic writes, temp-file sweeping
    files.py      file, directory, symlink
    packages.py   package (through the host's apt/dpkg or dnf/rpm)
    sysctl.py     sysctl (runtime value and the persistent sysctl.d file)
    services.py   service (through the host's systemd)

Providers only observe and change; they never decide between healing and
reporting, and never record results: that is the Applier's one decision.
"""
