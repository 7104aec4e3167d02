"""The pull-request plan: what a change does to which nodes, and how it will roll out."""
