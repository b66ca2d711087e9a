"""The project's benchmarks: each script is a module run from the repository root,

    python -m benchmarks.NAME --help

and the rest (networks, training loops, the job pool) is shared between them."""
