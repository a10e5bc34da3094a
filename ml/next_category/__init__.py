"""Next-category prediction: which categories a shopper will touch in the label window.

The second question a shop acts on (the purchase model says who, this says with what).
baselines.py holds the four rules a model must beat, model.py the network (the sequence
family's encoder with one output per category and a repeat term) and its training,
evaluation.py the comparison on the promotion window with user-level intervals and the
promotion gate, pyfunc.py the registered model (`next-category`). The targets are
`marts.category_labels`; ranking metrics live in `ml.evaluation.ranking`.
"""
