"""``python -m experiments.bench``: the cost of the harness and of each method, as ratios.

Every figure is a ratio of two CPU times measured in the same process, with the compared jobs
interleaved and their order reversed each round (:mod:`experiments.bench.timing`), so that a
shared, noisy machine slows both sides alike. The cases (:mod:`experiments.bench.cases`) are
grouped as in issue 16:

* ``a`` / ``harness``: the shared loop (:func:`experiments.loop.fit` with ``method=backprop``)
  against a bare hand-written torch loop on the same model, batches, optimiser and loss;
* ``b`` / ``methods``: each method's epoch against backprop's, on the default MLP and the RNN;
* ``c`` / ``flops``: the wide net's training step's FLOP/s against ``torch.matmul``'s;
* ``d`` / ``official``: each method against backprop on the official implementations' shapes.

Beside each method's time ratio goes its FLOP floor: the matrix-product FLOPs of one training
step over the reference's, counted exactly (:mod:`experiments.bench.flops`). The tables
(:mod:`experiments.bench.report`) go to ``reports/bench/bench.{csv,md}`` and ``summary.md``.

Other submodules: :mod:`~experiments.bench.jobs` (the timed units of work),
:mod:`~experiments.bench.timing` (interleaved rounds), :mod:`~experiments.bench.official` and
:mod:`~experiments.bench.official_accuracy` (the official implementations),
:mod:`~experiments.bench.profile` (``python -m experiments.bench.profile``: where a method's time
goes) and :mod:`~experiments.bench.fingerprint` (``python -m experiments.bench.fingerprint``:
one SHA-256 per seeded tiny run of every method, to check that a change keeps every bit).
"""
