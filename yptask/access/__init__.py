"""Who may do what, independent of transport: addresses, passwords, the node's secrets."""
