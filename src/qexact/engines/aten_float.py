"""ATen's float32 kernels of transformer models (filled in by issue 11's work)."""

KERNELS: dict = {}
