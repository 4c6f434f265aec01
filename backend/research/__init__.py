"""Research analyses: retrieval, subdomains, coverage, SHIFT."""
