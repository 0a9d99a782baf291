"""Graph analysis: tracing, channel propagation and zero-invariant groups."""
