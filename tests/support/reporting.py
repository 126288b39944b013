"""Case and element counts that differential tests print at the end of a run."""

from __future__ import annotations


def print_counts(request, stats) -> None:
    """Print ``{key: Counter}`` case/element counts after the run, uncaptured, each line prefixed
    with the test module's name."""
    writer = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if writer is None or capture is None or not stats:
        return
    prefix = request.module.__name__.rsplit(".", 1)[-1]
    with capture.global_and_fixture_disabled():
        writer.write_line("")
        for key, counter in sorted(stats.items()):
            writer.write_line(f"{prefix} {key}: " + ", ".join(f"{k}={v}" for k, v in
                                                              sorted(counter.items())))
