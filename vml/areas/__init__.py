"""Working areas: the places whose file trees are versioned (a directory today; ssh and libvirt later)."""
