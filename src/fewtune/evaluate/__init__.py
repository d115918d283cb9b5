"""How good is it: episodes, benchmark, evaluation reports and learning-curve comparisons."""
