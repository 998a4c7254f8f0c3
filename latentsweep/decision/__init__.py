"""How neighbours become a decision, shared by the index (calibrated at build) and the sweep (applied).

vote (k-NN majority, open set; pure) -> calibration (the open-set threshold and the vote's confidence,
fitted leave-one-out on an index's own references; pure).
"""
