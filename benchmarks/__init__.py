"""``make bench``: the measurements behind docs/BENCHMARKS.md (not part of the installed
package; run from a checkout as ``python -m benchmarks.run``)."""
