"""The node's side of a worker process: spawning it and the connection over its pipes."""
