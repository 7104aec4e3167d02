"""The pull-request plan: what a change does to which nodes, and how it will roll out.

Layers, each a module, in the order ``build_plan`` uses them:

    plan        build_plan: render BASE, tree-diff, render HEAD incrementally, then the rest
    changes     two renders -> per-node resource changes (unified diffs), added/removed nodes, transitions
    group       nodes with identical changes (modulo their own name and address) -> one group
    provenance  where each changed value comes from in HEAD (explain), within a lookup budget
    preview     the rollout waves, windows, freezes and the emergency trailer
    markdown    the PR comment: <details> per group, capped below GitHub's comment size
    jsonreport  the JSON for bots (schemas/plan.json), never truncated

Everything but ``plan`` (git and the renderer) and ``provenance`` (explain)
is pure: values in, values out. Bad fabric content never raises; it is
reported in the plan and makes the command exit 1.
"""
