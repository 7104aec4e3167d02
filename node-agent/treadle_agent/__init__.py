"""The Treadle node agent; its subpackage ``contract`` is all the controller imports of it.

A base install (``pip install treadle``) is the agent alone: nothing in this
package may import the controller's dependencies (pygit2, ruamel.yaml, jinja2,
watchfiles, the web framework).
"""

__version__ = "0.1.0"
