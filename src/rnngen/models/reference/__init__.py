"""Plain implementations of the models, on the same parameters, written the straightforward way:
the tests check the fast paths against them (values and gradients) and ``bench/throughput.py``
times them as the baseline. Not registered models."""
