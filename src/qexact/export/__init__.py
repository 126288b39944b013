"""What porting needs: golden vectors with every intermediate (``golden``), portable C99 with
the engine's numerics (``c``), certified integer-only requantization (``integer``), and the
exhaustively checked tables and index maps the C uses for the ops that are not a GEMM
(``tables``)."""
