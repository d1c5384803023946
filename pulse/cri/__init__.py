"""Pod metadata from the Container Runtime Interface (containerd, CRI-O)."""
