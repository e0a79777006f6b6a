"""The plumbing every stage shares: params, artifact layout and I/O, models and their loading,
task records, the frontier chain, and how a stage runs."""
