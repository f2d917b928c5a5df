"""Studies over many runs: sweeps, seed statistics, comparison reports and plots."""
