"""What the node takes in: the checks every cast and call passes, whatever its transport."""
