"""Where and how models compute: device and precision placement, data-parallel processes,
model sizes from configs, and the plan of a run's disk and memory before it starts."""
