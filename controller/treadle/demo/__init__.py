"""`treadle demo`: the whole system on one machine, on its own.

    workspace   the workspace: bare repository, admin clone, keys, controller and agent configs
    grow        the template grown to N nodes on loopback addresses, adapted to one machine
    processes   the controller and agent processes, always stopped; memory of the whole tree
    readings    the agents' /metrics and the controller's API, read as an operator would
    story       the scenes, each a list of real steps and checks
    view        rich output: steps, the live wave table, the summary
    play        all of it in order: what the command runs

The command itself is :mod:`treadle.commands.demo`.
"""
