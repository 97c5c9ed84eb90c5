"""Code both services use: image decoding, safe URL fetching, errors and Flask plumbing."""
