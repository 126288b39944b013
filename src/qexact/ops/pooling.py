"""(in progress) pooling ops."""
