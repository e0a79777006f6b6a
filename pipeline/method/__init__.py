"""SemAlign, the paper's method: capture and attribution on the source, layer pairing, the
semantic alignment map, source-side supervision and its Fisher surrogate, the frontier
objectives and training, export of the transferred model, and its quality and analysis."""
