"""Names both sides spell: lifecycle states, the agent's metric names and port, the simulated host's file.

The controller reads the agent's metrics (the rollout's observations, the node
view, Prometheus queries) by these names and the agent exports them by these
names; a rename here is a rename on both sides.
"""

from __future__ import annotations

#: A node's lifecycle states (node.json's ``lifecycle``); the agent exports one as 1 in METRIC_LIFECYCLE.
LIFECYCLE_STATES = ("provisioning", "production", "draining", "maintenance", "retired")
#: The port an agent serves /metrics on when the node file sets no ``agent.metrics_port``
#: (and the port of agent-config.json's default ``metrics_listen``).
DEFAULT_METRICS_PORT = 9731

#: Every agent series starts with this.
METRIC_PREFIX = "treadle_agent_"
METRIC_INFO = "treadle_agent_info"  # labels node, site, cluster, version
METRIC_MANIFEST_GENERATION = "treadle_agent_manifest_generation"  # highest accepted generation
METRIC_APPLIED_GENERATION = "treadle_agent_applied_generation"
METRIC_LAST_APPLY_SUCCESS = "treadle_agent_last_apply_success"
METRIC_LAST_APPLY_TIMESTAMP = "treadle_agent_last_apply_timestamp_seconds"
METRIC_APPLY_DURATION = "treadle_agent_apply_duration_seconds"
METRIC_RESOURCES = "treadle_agent_resources"  # labels type, status (one of RESOURCE_STATUSES)
METRIC_HEALTH_CHECK_UP = "treadle_agent_health_check_up"  # label check
METRIC_HEALTHY = "treadle_agent_healthy"
METRIC_VERIFY_FAILURES = "treadle_agent_verify_failures"  # counter, label reason
METRIC_FETCH_FAILURES = "treadle_agent_fetch_failures"  # counter, label reason
METRIC_MANIFEST_EXPIRY = "treadle_agent_manifest_expiry_timestamp_seconds"
METRIC_LIFECYCLE = "treadle_agent_lifecycle"  # label state (one of LIFECYCLE_STATES)
#: The ``status`` label values of METRIC_RESOURCES.
RESOURCE_STATUSES = ("in_sync", "drifted", "failed")
#: Which of RESOURCE_STATUSES each apply result status counts as (changed and healed resources are in sync now;
#: a skipped one is not what the manifest asks for).
RESOURCE_STATUS_OF_RESULT = {
    "in_sync": "in_sync",
    "changed": "in_sync",
    "healed": "in_sync",
    "drifted": "drifted",
    "failed": "failed",
    "skipped": "failed",
}

#: Where an agent on the ``simulated`` host (package_manager = "simulated") keeps its packages and units,
#: in its state dir; the demo reads it to show what the agent did.
SIMULATED_HOST_FILE = "simulated-host.json"
