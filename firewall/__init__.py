"""One table of exposed services, rendered to nftables (primary) and UFW (compatibility)."""
