"""The node's concrete actor supervision tree (node, task and worker supervisors)."""
