"""What a node keeps on disk: the journal, its group-commit thread, the replicated config map."""
