"""Method pipelines composed from the shared stages; each exposes ``run_<method>(cfg) -> RunResult``."""
