"""Stage 3: attribution sweeps and evaluation against a sharded index.

vote (k-NN majority; pure) and metrics (the paper's protocol; pure) -> actor (loads the index once,
answers batches) -> sweep (Ray Data over query files, results partitioned by date) -> evaluate
(leave-one-out on the reference set) -> pull (results from object storage to an analyst's disk).
"""
