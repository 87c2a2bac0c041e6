"""Code the tests share: the reference model of the fold, the query reference evaluator and
its datasets, the MLflow oracle and its runner, and small helpers. No test module imports
another test module; they import from here."""
