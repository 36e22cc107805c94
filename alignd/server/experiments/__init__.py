"""A/B experiments: definitions, assignment, the record store and reports."""
