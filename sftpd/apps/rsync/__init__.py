"""rsync over ssh: the argument allow-list, the bubblewrap sandbox, the bridge."""
