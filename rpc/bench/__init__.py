"""The load generator behind ``rpc bench`` and the benchmark suite (extra ``[bench]``)."""
