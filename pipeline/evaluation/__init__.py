"""Measuring and reporting: benchmark protocols (generation, multiple-choice scoring, answer
parsing, the code sandbox), held-out agreement, statistics and paired tests, budgets, and the
results report."""
