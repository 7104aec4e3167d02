"""The fabric model: load, merge, render, check and explain a fabric repository.

Layers, each a module, bottom up:

    source       a read-only tree: work tree directory or git revision -> {path: blob id}, bytes
    yamlload     YAML 1.2 through libyaml, merge tags (!append !delete !replace), caps
    locate       line/column of a key path, found lazily with the round-trip loader
    cache        everything derived from a blob (parse, schema verdict, template code); a source's listing
    layout       which file plays which role; misplaced files
    merge        the copy-on-write overlay merge and provenance replay (trace)
    overlay      a node's chain of overlays; per-cluster shared prefixes
    templates    sandboxed Jinja2 from templates/ only
    nodemanifest merged body -> NodeManifest dict
    checks       path policy, modes, lifecycle rules, fleet invariants
    run          one pass over a source: files loaded and validated, findings located
    pool         fork_map: jobs shared with one forked helper when a CPU is idle, results in job order
    render       render_fabric: all of the above, incremental, all problems in one run
    patched      a large read-only mapping with a few keys replaced, without copying it
    incremental  the render of a change to node files only, in proportion to the change
    explain      which overlays set a value, where, and who committed it

Bad content never raises from :func:`render_fabric`; it is returned as
diagnostics. Foreign errors (ruamel, jinja2, pygit2, jsonschema) are turned
into diagnostics or Treadle errors at the module that meets them.
"""

from treadle.fabric.cache import ParseCache
from treadle.fabric.explain import Blame, Provenance, explain
from treadle.fabric.render import RenderedNode, RenderResult, Scope, render_fabric
from treadle.fabric.source import GitRevisionSource, Source, WorkTreeSource, blob_id
from treadle.fabric.yamlload import Limits

__all__ = [
    "Blame",
    "GitRevisionSource",
    "Limits",
    "ParseCache",
    "Provenance",
    "RenderResult",
    "RenderedNode",
    "Scope",
    "Source",
    "WorkTreeSource",
    "blob_id",
    "explain",
    "render_fabric",
]
