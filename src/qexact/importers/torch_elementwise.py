"""(in progress) torch import handlers for elementwise ops."""
