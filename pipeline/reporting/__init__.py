"""Reading results back: continual-learning metrics, run results, report tables and figures."""
