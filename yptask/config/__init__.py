"""Models and their checks: tasks (tasks.py), the node (node.py), shared checks (fields.py)."""
