"""The cluster: links between nodes, membership, discovery, cluster-wide client ids."""
