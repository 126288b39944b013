"""(in progress) normalization ops."""
