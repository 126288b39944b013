"""(in progress) torch import handlers for pooling ops."""
