"""edgekv: a globally replicated key/value store for edge applications."""
