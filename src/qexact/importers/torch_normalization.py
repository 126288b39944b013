"""(in progress) torch import handlers for normalization ops."""
