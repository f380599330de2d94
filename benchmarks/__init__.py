"""Side-by-side benchmarks. Run all with ``make bench``, or one with
``python -m benchmarks request_path``. Results are ratios against a baseline measured in
the same process, alternating rounds, because these machines are noisy."""
