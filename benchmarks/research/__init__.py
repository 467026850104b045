"""Scripts that chose a design (kept to rerun the choice), not benchmarks of what ships."""
