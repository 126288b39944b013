"""(in progress) torch import handlers for conv ops."""
