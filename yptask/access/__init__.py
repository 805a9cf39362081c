"""Who may do what, whatever the transport: the policy, allow-list, passwords, secrets."""
