"""Scoring a shopper at any moment with exactly the features the models were trained on.

The dbt models are the one definition of every feature: `sql` compiles them for the `serving`
target (an in-memory database the service fills with one shopper's events), `snapshot`
publishes what the service reads besides the request (the shop's recent events under
pseudonymous keys, the category vocabulary, the grid's span and the compiled statements) as one
read-only DuckDB file, and `features` runs the compiled statements for one shopper, history
plus live events, at a cutoff.
"""
