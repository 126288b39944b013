"""(in progress) conv ops."""
