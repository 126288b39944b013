"""ATen's float math of quantized recurrent cells (filled in by issue 11's work)."""

KERNELS: dict = {}
