"""Layer 3, parallelism: the mesh, the apply_* functions, pipeline stages, and one step runner for all.

`parallelize.parallelize` composes the whole-model strategies, `pp.build_pipeline` the pipelined
ones, and `runner.build_runner` hands the Trainer either behind the same interface.
"""
