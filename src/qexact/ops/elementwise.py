"""(in progress) elementwise ops."""
