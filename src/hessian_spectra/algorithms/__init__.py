"""Matrix-free algorithms. They see only a `LinearOperator`, never a model or data."""
