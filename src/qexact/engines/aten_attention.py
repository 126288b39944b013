"""ATen's float attention kernels (filled in by issue 11's work)."""

KERNELS: dict = {}
